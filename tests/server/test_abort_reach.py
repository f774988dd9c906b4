"""An abort reaches the one submission it names: not a later request reusing a finished one's id,
not another service's request; and the first reason an aborted request got is the one counted."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from smg_grpc_proto.generated import sglang_scheduler_pb2 as sglang

from lil_sparse.events import TokenEvent
from lil_sparse.options import RequestOptions, StoppingOptions
from lil_sparse.testing.step_hold import StepHold
from server.config import ServerConfig
from server.engine_loop import EngineLoop
from server.smg.servicer import SmgSchedulerServicer
from server.submission import submitted

PROMPT = list(range(10, 60))
LONG = RequestOptions(stopping=StoppingOptions(max_new_tokens=40, ignore_eos=True))


@pytest.fixture
def loop_and_finishes(tiny_engine: Any) -> Iterator[tuple[EngineLoop, list[tuple[str, str, bool]]]]:
    finishes: list[tuple[str, str, bool]] = []

    def on_finished(event: TokenEvent, options: RequestOptions, cancelled: bool) -> None:
        assert event.finish_reason is not None
        finishes.append((event.request_id, event.finish_reason.value, cancelled))

    loop = EngineLoop(tiny_engine, 4, 4, on_finished=on_finished)
    loop.start()
    yield loop, finishes
    loop.stop(10)


def _run(
    loop: EngineLoop, request_id: str, options: RequestOptions = LONG
) -> tuple[threading.Event, list[Any]]:
    """Submit from this thread; the events land in a list, ``done`` set at the final one."""
    done, events = threading.Event(), []

    def sink(event: Any) -> None:
        events.append(event)
        if not isinstance(event, TokenEvent) or event.finished:
            done.set()

    loop.submit(request_id, PROMPT, options, sink).result(30)
    return done, events


@pytest.mark.parametrize(("first", "then", "counted"), [(False, True, False), (True, False, True)])
def test_the_first_abort_reason_is_the_one_counted(
    loop_and_finishes: Any,
    tiny_engine: Any,
    monkeypatch: pytest.MonkeyPatch,
    first: bool,
    then: bool,
    counted: bool,
) -> None:
    """A drain's abort followed by the client's cancel stays the server's ("aborted"), and the
    other way round stays a cancel."""
    loop, finishes = loop_and_finishes
    hold = StepHold.install(monkeypatch, tiny_engine)
    hold.hold()  # both aborts are in the inbox before the engine steps again
    done, _ = _run(loop, "r")
    loop.abort("r", cancelled=first)
    loop.abort("r", cancelled=then)
    hold.release()
    assert done.wait(30)
    assert finishes == [("r", "aborted", counted)]


def test_an_abort_with_a_finished_submissions_sink_spares_the_next_request_of_that_id(
    loop_and_finishes: Any,
) -> None:
    loop, finishes = loop_and_finishes
    stale_sink = object()
    done, events = _run(
        loop, "reused", RequestOptions(stopping=StoppingOptions(max_new_tokens=2, ignore_eos=True))
    )
    assert done.wait(30)
    done, events = _run(loop, "reused")  # the id again, once the first finished
    loop.abort("reused", cancelled=True, sink=stale_sink)  # type: ignore[arg-type]  # a late abort of the first
    assert done.wait(30)
    assert [(f[1], f[2]) for f in finishes] == [("length", False), ("length", False)]
    assert events[-1].report.completion_tokens == 40


class _Context:
    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"unexpected abort {code}: {details}")


def test_smg_abort_spares_a_v1_request_that_took_a_finished_smg_requests_id(
    loop_and_finishes: Any, tiny_engine: Any, tiny_model_dir: Path
) -> None:
    """The SMG request's final response is out but its generator not yet resumed (a slow reader):
    the engine loop released the id, a lil_sparse.v1 request takes it, and SMG's Abort of the id
    must not reach that request (it did, found by review on 2026-12-02)."""
    loop, finishes = loop_and_finishes
    config = ServerConfig(
        model=str(tiny_model_dir), port=0, metrics_port=0, kv_cache_tokens=4096, max_running=4
    )
    smg = SmgSchedulerServicer(loop, tiny_engine, config, "test", lambda: None)
    params = sglang.SamplingParams(temperature=0.0, top_p=1.0, top_k=-1, max_new_tokens=4)
    request = sglang.GenerateRequest(
        request_id="X", tokenized=sglang.TokenizedInput(input_ids=PROMPT), sampling_params=params
    )

    async def scenario() -> tuple[Any, Any]:
        generate = smg.Generate(request, _Context())
        final = await generate.__anext__()  # suspended at its yield of the complete response
        assert final.WhichOneof("response") == "complete"
        async with submitted(loop, "X", PROMPT, LONG) as v1:
            reply = await smg.Abort(sglang.AbortRequest(request_id="X"), _Context())
            while True:
                event = await v1.events.get()
                assert isinstance(event, TokenEvent)
                if event.finished:
                    break
        await generate.aclose()
        return reply, event

    reply, event = asyncio.run(scenario())
    assert (reply.success, reply.message) == (False, "request X not found")
    assert (event.finish_reason.value, event.report.completion_tokens) == ("length", 40)
    assert [(f[1], f[2]) for f in finishes] == [("length", False), ("length", False)]
