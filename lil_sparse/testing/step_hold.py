"""Hold an in-process engine's steps at a test's word (server and CLI tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class StepHold:
    """Holds an in-process engine's steps at a test's word, so that a stream which has begun
    cannot finish while the test acts on it (a cancel, a drain, a second request). The tiny model
    streams 2000 tokens in about 2 s, and a loaded 2-core machine can pause a test thread that
    long; a test that only hopes the stream is still running is a race.

    ``hold()`` (e.g. as ``consume_in_background``'s ``on_first_chunk``) makes the engine thread
    wait before its next step; ``release()`` lets it run. ``install`` patches ``engine.step``
    through ``monkeypatch``, which restores it after the test; the hold gives up after 120 s.
    """

    def __init__(self, step: Callable[[], Any]) -> None:
        self._step = step
        self._running = threading.Event()
        self._running.set()

    @classmethod
    def install(cls, monkeypatch: Any, engine: Any) -> StepHold:
        hold = cls(engine.step)
        monkeypatch.setattr(engine, "step", hold._held_step)
        return hold

    def hold(self) -> None:
        self._running.clear()

    def release(self) -> None:
        self._running.set()

    def _held_step(self) -> Any:
        self._running.wait(timeout=120)
        return self._step()
