"""Assembles one sidecar: engine thread, servicer, health, reflection, metrics; start and drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server import security, wire
from server.config import ServerConfig
from server.engine_loop import EngineLoop
from server.metrics import ServerMetrics
from server.ports import GRPC_EXCLUSIVE_PORT_OPTIONS, check_port_free
from server.servicer import SERVICE_NAME, LilSparseServicer
from server.smg import SERVICE_NAME as SMG_SERVICE_NAME
from server.smg import SmgSchedulerServicer, add_smg_service

logger = logging.getLogger(__name__)
# How often the drain loop looks at the in-flight count.
_DRAIN_POLL_SECONDS = 0.05
# After the grace period, aborted streams get this long to deliver their final message.
_ABORT_FLUSH_SECONDS = 2.0


def server_version() -> str:
    try:
        return metadata.version("lil-sparse")
    except metadata.PackageNotFoundError:  # running from a source checkout
        return "0.1.0+source"


def load_engine(config: ServerConfig) -> Any:
    """Build the engine from the server config (slow: loads weights)."""
    from lil_sparse.config import EngineConfig
    from lil_sparse.engine import LLMEngine
    from lil_sparse.loading.torch_threads import set_torch_threads

    set_torch_threads(config.torch_threads)

    engine_config = EngineConfig(
        model=config.model,
        device=config.device,
        dtype=config.dtype,
        backend=config.backend,
        page_size=config.page_size,
        kv_cache_tokens=config.kv_cache_tokens,
        max_batch_size=config.max_running,
        max_model_len=config.max_model_len,
        chunked_prefill=config.chunked_prefill,
        max_num_batched_tokens=config.max_num_batched_tokens,
        selection=config.engine_selection,
        overlap_scheduling=config.engine_overlap,
        warm_up=config.engine_warm_up,
        # The server admits at most max_in_flight requests (one limit, one message); the engine's
        # own queue limit is only a backstop that this keeps from ever tripping.
        max_waiting=config.max_in_flight,
        guardian_workers=config.guardian_workers,
    )
    return LLMEngine.from_config(engine_config)


async def load_engine_in_background(config: ServerConfig) -> Any:
    """:func:`load_engine` on a daemon thread, awaited. Unlike ``asyncio.to_thread``, whose
    executor threads the interpreter joins at exit, a signal during the load (minutes, with a
    CUDA warm-up on a fresh machine) can end the process without waiting for it. Raises what the
    load raises."""
    loop = asyncio.get_running_loop()
    loaded: asyncio.Future[Any] = loop.create_future()

    def deliver(outcome: tuple[bool, Any]) -> None:
        if loaded.done():  # the caller stopped waiting (cancelled)
            return
        ok, value = outcome
        if ok:
            loaded.set_result(value)
        else:
            loaded.set_exception(value)

    def load() -> None:
        try:
            outcome: tuple[bool, Any] = (True, load_engine(config))
        except BaseException as error:  # handed to the awaiting coroutine
            outcome = (False, error)
        with contextlib.suppress(RuntimeError):  # the event loop closed: nobody waits any more
            loop.call_soon_threadsafe(deliver, outcome)

    threading.Thread(target=load, name="lil-sparse-load", daemon=True).start()
    return await loaded


class SidecarServer:
    """One gRPC server over one engine. Use ``await start()``, then ``await drain()`` to stop.

    ``engine`` may be passed in (tests share one loaded engine); otherwise it is loaded from
    ``config`` in a worker thread so the event loop stays responsive.
    """

    def __init__(self, config: ServerConfig, engine: Any | None = None) -> None:
        self.config = config
        self._engine = engine
        self._owns_engine = engine is None
        # Labelled with the model's base name, never a path; rebuilt once the engine is known.
        self.metrics = ServerMetrics(Path(config.model).name, config.page_size, model_name=config.model_id)
        self.health = health.aio.HealthServicer()
        # Set when the engine thread died: health is NOT_SERVING and `serve` exits non-zero.
        self.engine_died = asyncio.Event()
        self._death_task: asyncio.Future[None] | None = None
        self._tokenizer_pool: ThreadPoolExecutor | None = None
        self.port = 0
        self.metrics_port = 0
        self.health_port = -1  # the plaintext health-only port, when configured
        self._health_grpc: grpc.aio.Server | None = None
        self._grpc: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        self._servicer: LilSparseServicer | None = None
        self._smg_servicer: SmgSchedulerServicer | None = None
        self._loop: EngineLoop | None = None

    @property
    def engine(self) -> Any:
        """The engine this server drives: the one passed in, or the one ``start()`` loaded (None before)."""
        return self._engine

    @property
    def engine_loop(self) -> EngineLoop:
        if self._loop is None:
            raise RuntimeError("server not started")
        return self._loop

    async def start(self) -> None:
        check_port_free(self.config.host, self.config.port, "port")
        check_port_free(self.config.host, self.config.metrics_port, "metrics_port")
        if self._engine is None:
            self._engine = await load_engine_in_background(self.config)
        engine: Any = self._engine
        # Labelled with the model's display name (a folder's or file's base name), never a path.
        self.metrics = ServerMetrics(
            str(engine.info.model_name), self.config.page_size, model_name=self.config.model_id
        )
        event_loop = asyncio.get_running_loop()
        self._loop = EngineLoop(
            engine,
            max_running=self.config.max_running,
            max_waiting=self.config.max_waiting,
            on_stats=self.metrics.observe_stats,
            on_finished=self.metrics.observe_finished,
            on_dropped=self.metrics.observe_dropped,
            on_death=lambda error: self._call_soon(event_loop, self._on_engine_death),
        )
        self._loop.start()
        self._tokenizer_pool = ThreadPoolExecutor(self.config.tokenizer_threads, "lil-sparse-tokenize")
        self._servicer = LilSparseServicer(
            self._loop,
            engine.tokenizer,
            engine.info,
            self.config,
            server_version(),
            self._tokenizer_pool,
            vocab_size=engine.model_config.vocab_size,
        )
        # grpc's own 4 MiB message limit must not undercut max_prompt_bytes, whose refusal names
        # the field; a body beyond this is refused by grpc itself (RESOURCE_EXHAUSTED).
        max_message = max(4 << 20, self.config.max_prompt_bytes + (1 << 20))
        server = grpc.aio.server(
            interceptors=security.interceptors(self.config),
            options=[("grpc.max_receive_message_length", max_message), *GRPC_EXCLUSIVE_PORT_OPTIONS],
        )
        wire.add_servicer(self._servicer, server, SERVICE_NAME)
        self._smg_servicer = add_smg_service(
            server, self._loop, engine, self.config, server_version(), lambda: self.metrics.last_stats
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.config.reflection:
            names = (
                SERVICE_NAME,
                SMG_SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            )
            reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
        address = f"{self.config.host}:{self.config.port}"
        credentials = security.server_credentials(self.config)
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        await server.start()
        self._grpc = server
        if self.config.health_port >= 0:
            await self._start_health_port()
        self._metrics_http = self.metrics.serve(self.config.host, self.config.metrics_port)
        self.metrics_port = self._metrics_http.server_address[1]
        for service in ("", SERVICE_NAME, SMG_SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        # The id that info, metrics and gateways use, and what --model said when that differs
        # (an alias such as "SmolLM2", a path, or a --served-model-name).
        model_id = self.config.model_id
        given = f" (--model {self.config.model})" if self.config.model != model_id else ""
        logger.info(
            "serving %s%s on port %d, metrics on port %d", model_id, given, self.port, self.metrics_port
        )

    async def _start_health_port(self) -> None:
        """Health alone on a plaintext port: kubelet gRPC probes speak neither TLS nor tokens."""
        health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, health_server)
        self.health_port = health_server.add_insecure_port(f"{self.config.host}:{self.config.health_port}")
        await health_server.start()
        self._health_grpc = health_server

    @staticmethod
    def _call_soon(event_loop: asyncio.AbstractEventLoop, callback: Any) -> None:
        event_loop.call_soon_threadsafe(callback)

    def _on_engine_death(self) -> None:
        """On the event loop: the engine thread died, so neither probe may say SERVING."""
        self.engine_died.set()
        self._death_task = asyncio.ensure_future(self._not_serving())

    async def _not_serving(self) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def drain(self, grace_seconds: float | None = None) -> None:
        """Stop taking calls, let in-flight streams finish within the grace period, then stop.

        Readiness turns NOT_SERVING first, so load balancers stop routing here while we drain;
        liveness ("") stays SERVING, so the kubelet does not kill a pod that is draining well.
        Streams still running after the grace period are aborted (finish reason ABORTED).
        """
        grace = self.config.grace_period_seconds if grace_seconds is None else grace_seconds
        # Readiness only: liveness ("") stays SERVING while the streams drain.
        for service in (SERVICE_NAME, SMG_SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        for servicer in (self._servicer, self._smg_servicer):
            if servicer is not None:
                servicer.draining = True
        loop = self.engine_loop
        loop.close_admission()
        deadline = time.monotonic() + grace
        while loop.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        if loop.in_flight:
            logger.warning("grace period over; aborting %d requests", loop.in_flight)
        await asyncio.to_thread(loop.stop, _ABORT_FLUSH_SECONDS)
        engine: Any = self._engine
        if self._owns_engine and hasattr(engine, "close"):
            engine.close()  # its Guardian thread pool
        if self._grpc is not None:
            await self._grpc.stop(_ABORT_FLUSH_SECONDS)
        if self._health_grpc is not None:
            await self._health_grpc.stop(0)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        if self._tokenizer_pool is not None:
            self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    async def wait_for_termination(self) -> None:
        if self._grpc is not None:
            await self._grpc.wait_for_termination()
