"""Run a sidecar on a background thread with its own event loop (tests, notebooks, the eval harness).

with BackgroundServer(ServerConfig(model=path, port=0, metrics_port=0), engine=engine) as server:
    client = LilClient(f"127.0.0.1:{server.port}")
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from server.app import SidecarServer
from server.config import ServerConfig

_T = TypeVar("_T")


class BackgroundServer:
    """A started :class:`SidecarServer` whose event loop runs on a daemon thread."""

    def __init__(self, config: ServerConfig, engine: Any | None = None) -> None:
        self.server = SidecarServer(config, engine)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lil-sparse-server", daemon=True)
        self._drained: Any = None  # the drain's concurrent Future, once started

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics_port(self) -> int:
        return self.server.metrics_port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self) -> BackgroundServer:
        self._thread.start()
        self.run(self.server.start())
        return self

    def drain_async(self, grace_seconds: float | None = None) -> Any:
        """Begin draining and return a concurrent Future that resolves when the server stopped."""
        if self._drained is None:
            self._drained = asyncio.run_coroutine_threadsafe(self.server.drain(grace_seconds), self._loop)
        return self._drained

    def stop(self, grace_seconds: float = 0.0) -> None:
        """Drain (aborting what is left after ``grace_seconds``) and end the thread; idempotent."""
        if self._loop.is_closed():
            return
        self.drain_async(grace_seconds).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
