"""Every admitted request is counted once: by its final event, by its final event after its
sink raised (the server cut it), or by ``on_dropped`` when it gets none: cancelled before the
engine accepted it, or taken by an engine step failure."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from server_harness import wait_until

from lil_sparse.events import TokenEvent
from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions
from server.engine_loop import EngineLoop
from server.errors import EngineFailed

PROMPT = list(range(10, 60))


class _Counts:
    def __init__(self) -> None:
        self.finished: list[tuple[str, str, bool]] = []
        self.dropped: list[tuple[str, str]] = []

    def on_finished(self, event: TokenEvent, options: RequestOptions, cancelled: bool) -> None:
        assert event.finish_reason is not None
        self.finished.append((event.request_id, event.finish_reason.value, cancelled))

    def on_dropped(self, options: RequestOptions, finish_reason: str) -> None:
        self.dropped.append((options.sparse.policy, finish_reason))


def _options(policy: str = "full") -> RequestOptions:
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=40, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=32),
    )


def test_a_request_whose_sink_raised_is_counted_aborted_at_its_final_event(tiny_engine: Any) -> None:
    counts = _Counts()
    loop = EngineLoop(tiny_engine, 4, 4, on_finished=counts.on_finished, on_dropped=counts.on_dropped)
    loop.start()
    try:
        calls = threading.Event()

        def raising_sink(event: Any) -> None:
            calls.set()
            raise RuntimeError("injected sink fault")

        done = threading.Event()
        loop.submit("bad", PROMPT, _options(), raising_sink).result(30)
        loop.submit("good", PROMPT, _options(), lambda e: done.set() if e.finished else None).result(30)
        assert done.wait(30) and calls.is_set()
        assert wait_until(lambda: len(counts.finished) == 2)
    finally:
        loop.stop(10)
    assert sorted(counts.finished) == [("bad", "aborted", False), ("good", "length", False)]
    assert counts.dropped == []


def test_requests_an_engine_step_failure_took_are_counted_failed(
    tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = _Counts()
    loop = EngineLoop(tiny_engine, 4, 4, on_finished=counts.on_finished, on_dropped=counts.on_dropped)
    real_step = tiny_engine.step
    failures = iter([RuntimeError("injected step fault")])

    def failing_step() -> Any:  # the first step fails, the ones after run
        error = next(failures, None)
        if error is not None:
            raise error
        return real_step()

    monkeypatch.setattr(tiny_engine, "step", failing_step)
    errors: list[BaseException] = []
    # Both in the inbox before the thread starts: it accepts both, then its first step fails.
    accepted = [
        loop.submit(request_id, PROMPT, _options(policy), _collect(errors))
        for request_id, policy in (("a", "full"), ("b", "sink"))
    ]
    loop.start()
    try:
        assert [future.result(30) for future in accepted] == ["a", "b"]
        assert wait_until(lambda: len(errors) == 2)
        assert wait_until(lambda: not tiny_engine.has_unfinished())
    finally:
        loop.stop(10)
    assert sorted(counts.dropped) == [("full", "error"), ("sink", "error")]
    assert counts.finished == []  # their engine aborts later find no sink: not counted twice
    assert all(isinstance(error, EngineFailed) for error in errors)


def _collect(errors: list[BaseException]) -> Any:
    def sink(event: Any) -> None:
        if isinstance(event, BaseException):
            errors.append(event)

    return sink


def test_a_request_cancelled_before_acceptance_is_counted_cancelled(tiny_engine: Any) -> None:
    """A client deadline shorter than the wait in the queue: the request never reaches the
    engine, and the metrics still see the cancel (the cancelled-share alert, docs/deploy.md)."""
    counts = _Counts()
    loop = EngineLoop(tiny_engine, 4, 4, on_finished=counts.on_finished, on_dropped=counts.on_dropped)
    accepted = loop.submit("gone", PROMPT, _options("h2o"), lambda event: None)
    assert accepted.cancel()  # in the inbox: the thread has not started
    loop.start()
    try:
        assert wait_until(lambda: loop.cancelled_before_acceptance == 1)
    finally:
        loop.stop(10)
    assert counts.dropped == [("h2o", "cancelled")] and counts.finished == []
