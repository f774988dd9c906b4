"""Run Guardian checks off the decode loop.

zlib releases the GIL while it compresses, so a check on a worker thread overlaps with the
engine's next decode steps. The engine submits a check when one is due, collects finished ones
with :meth:`GuardianPool.poll` once per step, and bounds the lag by pausing only the request
whose check lags (it waits with :meth:`GuardianPool.wait_any` only when nothing else can run).

A Guardian is not thread safe and the incremental compressor must see its bytes in order, so the
checks of one key run one after another, in submission order, on one worker at a time. Checks of
different keys run in parallel. ``max_workers=0`` runs every check inline inside ``submit``
(deterministic: eval and tests use it).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from lil_sparse.events import GuardianCheckRecord
from lil_sparse.guardian.guardian import Guardian

KeyT = TypeVar("KeyT", bound=Hashable)


@dataclass(slots=True)
class _Check:
    guardian: Guardian
    sequence: bytes
    generated_tokens: int
    future: Future[GuardianCheckRecord] = field(default_factory=Future)


@dataclass(slots=True)
class _KeyState:
    queued: deque[_Check] = field(default_factory=deque)  # submitted, not started
    undelivered: deque[_Check] = field(default_factory=deque)  # submitted, not returned by poll
    draining: bool = False  # a worker is running this key's checks
    cancelled: bool = False


class GuardianPool(Generic[KeyT]):
    """Guardian checks of many requests (keys) on a thread pool. Thread safe."""

    def __init__(self, max_workers: int) -> None:
        if max_workers < 0:
            raise ValueError(f"max_workers: must be >= 0 (0 runs checks inline), got {max_workers}")
        self._executor = (
            ThreadPoolExecutor(max_workers, thread_name_prefix="guardian") if max_workers else None
        )
        self._lock = threading.Lock()
        self._keys: dict[KeyT, _KeyState] = {}
        self._closed = False

    def submit(self, key: KeyT, guardian: Guardian, sequence: bytes, generated_tokens: int) -> None:
        """Queue ``guardian.check(sequence, generated_tokens)`` behind the key's earlier checks."""
        check = _Check(guardian, sequence, generated_tokens)
        with self._lock:
            if self._closed:
                raise RuntimeError("GuardianPool is shut down")
            state = self._keys.setdefault(key, _KeyState())
            state.queued.append(check)
            state.undelivered.append(check)
            start_worker = not state.draining
            state.draining = True
        if not start_worker:
            return
        if self._executor is None:
            self._drain(state)
        else:
            self._executor.submit(self._drain, state)

    def _drain(self, state: _KeyState) -> None:
        """Run the key's queued checks in order until none is left."""
        while True:
            with self._lock:
                if not state.queued or state.cancelled:
                    state.draining = False
                    return
                check = state.queued.popleft()
            if not check.future.set_running_or_notify_cancel():
                continue
            try:
                record = check.guardian.check(check.sequence, check.generated_tokens)
            except Exception as error:  # handed to poll(), which raises it in the engine
                check.future.set_exception(error)
            else:
                check.future.set_result(record)

    def poll(self) -> list[tuple[KeyT, GuardianCheckRecord | Exception]]:
        """Finished checks not returned before, in submission order per key. Never blocks.

        A check that raised comes back as its exception, in its place in the key's order: one
        request's failing check is that request's problem, never the other keys'.
        """
        with self._lock:
            finished: list[tuple[KeyT, GuardianCheckRecord | Exception]] = []
            for key, state in list(self._keys.items()):
                while state.undelivered and state.undelivered[0].future.done():
                    future = state.undelivered.popleft().future
                    error = future.exception()
                    if error is not None and not isinstance(error, Exception):
                        raise error  # KeyboardInterrupt and the like are not a check's failure
                    finished.append((key, error if error is not None else future.result()))
                self._forget_if_idle(key, state)
            return finished

    def _forget_if_idle(self, key: KeyT, state: _KeyState) -> None:
        # Called with the lock held. A key with nothing in flight needs no state.
        if not state.undelivered and not state.draining:
            del self._keys[key]

    def wait(self, key: KeyT, timeout: float | None = None) -> bool:
        """Block until every check submitted for ``key`` has finished (results stay for
        :meth:`poll`). Returns False if ``timeout`` seconds passed first."""
        with self._lock:
            state = self._keys.get(key)
            futures = [check.future for check in state.undelivered] if state else []
        _, not_done = wait_futures(futures, timeout=timeout)
        return not not_done

    def wait_any(self, keys: list[KeyT], timeout: float) -> None:
        """Block until the oldest undelivered check of any of ``keys`` is finished, or
        ``timeout`` seconds pass (the engine calls this only when nothing else can run)."""
        with self._lock:
            futures = [
                state.undelivered[0].future
                for key in keys
                if (state := self._keys.get(key)) is not None and state.undelivered
            ]
        if futures:
            wait_futures(futures, timeout=timeout, return_when=FIRST_COMPLETED)

    def pending(self, key: KeyT) -> int:
        """Checks of ``key`` submitted and not finished yet (queued or running)."""
        with self._lock:
            state = self._keys.get(key)
            return sum(not check.future.done() for check in state.undelivered) if state else 0

    def cancel(self, key: KeyT) -> None:
        """Forget ``key``: queued checks never run, a running one finishes unseen, and finished
        results are dropped. A later submit with the same key starts fresh."""
        with self._lock:
            state = self._keys.pop(key, None)
            if state is None:
                return
            state.cancelled = True
            for check in state.queued:
                check.future.cancel()
            state.queued.clear()
            state.undelivered.clear()

    def shutdown(self) -> None:
        """Cancel every key and wait for running checks to end. Idempotent."""
        with self._lock:
            self._closed = True
            keys = list(self._keys)
        for key in keys:
            self.cancel(key)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> GuardianPool[KeyT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
