"""One request or client never hurts another: cancels at any point, failing sinks, a dead engine."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lil_client import LilClient, LilClientError
from lil_client._proto.lil_sparse.v1 import service_pb2, service_pb2_grpc
from server_harness import scrape, start_server, wait_until

from lil_sparse.events import TokenEvent
from lil_sparse.options import RequestOptions, StoppingOptions
from server.cli import serve
from server.config import ServerConfig
from server.engine_loop import EngineLoop

SERVICE = "lil_sparse.v1.LilSparseService"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


class FaultyEngine:
    """The real engine, except ``has_unfinished`` raises once ``fail`` is set: a bug outside step()."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.fail = threading.Event()

    def has_unfinished(self) -> bool:
        if self.fail.is_set():
            raise RuntimeError("injected fault outside step()")
        return bool(self._engine.has_unfinished())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def _idle(background: Any, engine: Any) -> bool:
    return background.server.engine_loop.in_flight == 0 and engine.stats().kv_pages_used == 0


def test_cancel_at_once_and_short_deadlines_never_stop_the_engine(
    tiny_model_dir: Path, tiny_engine: Any
) -> None:
    background = start_server(tiny_model_dir, tiny_engine)
    try:
        request = service_pb2.GenerateRequest(text="Hello there")
        request.stopping.max_new_tokens = 4
        codes = []
        with grpc.insecure_channel(background.address) as channel:
            stub = service_pb2_grpc.LilSparseServiceStub(channel)
            for attempt in range(40):
                call = stub.Generate(request, timeout=0.05 if attempt % 2 else None)
                if attempt % 2 == 0:
                    call.cancel()  # before the server even accepted it, most of the time
                try:
                    list(call)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as error:
                    codes.append(error.code())
        allowed = {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OK}
        assert set(codes) <= allowed
        assert wait_until(lambda: _idle(background, tiny_engine))
        with LilClient(background.address) as client:
            summary = client.complete("Hello there", max_new_tokens=4, ignore_eos=True)
        assert (summary.finish_reason, summary.completion_tokens) == ("length", 4)
        assert background.server.engine_loop.alive
        assert wait_until(lambda: _idle(background, tiny_engine))
    finally:
        background.stop()


def test_a_submission_cancelled_in_the_inbox_never_reaches_the_engine(tiny_engine: Any) -> None:
    """The exact race of the bug: the caller cancels after submit, before the engine accepts."""
    loop = EngineLoop(tiny_engine, max_running=4, max_waiting=4)
    options = RequestOptions(stopping=StoppingOptions(max_new_tokens=3, ignore_eos=True))
    prompt = tiny_engine.tokenizer.encode("Hello there")
    cancelled = [loop.submit(f"gone-{i}", prompt, options, lambda item: None) for i in range(5)]
    assert all(future.cancel() for future in cancelled)  # the thread has not started: still pending
    finished: list[TokenEvent] = []
    loop.start()
    try:
        kept = loop.submit("kept", prompt, options, lambda item: finished.append(item))
        assert kept.result(30) == "kept"
        assert wait_until(lambda: loop.in_flight == 0)
    finally:
        loop.stop(10)
    assert loop.cancelled_before_acceptance == 5
    assert [event.report.completion_tokens for event in finished if event.finished and event.report] == [3]
    assert tiny_engine.stats().kv_pages_used == 0


def test_a_failing_sink_loses_only_its_own_request(tiny_engine: Any) -> None:
    finished: dict[str, TokenEvent] = {}
    done = threading.Event()
    loop = EngineLoop(tiny_engine, max_running=4, max_waiting=4)
    loop.start()

    def broken(item: Any) -> None:
        raise RuntimeError("this client's sink is broken")

    def healthy(item: Any) -> None:
        if isinstance(item, TokenEvent) and item.finished:
            finished[item.request_id] = item
            done.set()

    options = RequestOptions(stopping=StoppingOptions(max_new_tokens=6, ignore_eos=True))
    prompt = tiny_engine.tokenizer.encode("hello world")
    try:
        loop.submit("broken", prompt, options, broken).result(30)
        loop.submit("healthy", prompt, options, healthy).result(30)
        assert done.wait(30)
        assert wait_until(lambda: loop.in_flight == 0 and tiny_engine.stats().kv_pages_used == 0)
        assert finished["healthy"].report is not None
        assert finished["healthy"].report.completion_tokens == 6
        assert loop.alive
    finally:
        loop.stop(10)


def test_a_dead_engine_thread_turns_both_health_services_not_serving(
    tiny_model_dir: Path, tiny_engine: Any
) -> None:
    faulty = FaultyEngine(tiny_engine)
    background = start_server(tiny_model_dir, faulty)
    try:
        with LilClient(background.address) as client:
            assert client.complete("hello", max_new_tokens=2, ignore_eos=True).completion_tokens == 2
            faulty.fail.set()
            background.server.engine_loop.abort("wake-the-thread")  # its next loop raises
            assert wait_until(lambda: not background.server.engine_loop.alive)
            assert wait_until(lambda: _health(background.address, "") == NOT_SERVING)
            assert _health(background.address, SERVICE) == NOT_SERVING
            assert background.server.engine_died.is_set()
            with pytest.raises(LilClientError) as refused:
                client.complete("hello", max_new_tokens=2)
        assert (refused.value.code, refused.value.message) == (
            grpc.StatusCode.UNAVAILABLE,
            "the engine stopped; the server is restarting",
        )
    finally:
        faulty.fail.clear()
        background.stop()
    assert tiny_engine.stats().kv_pages_used == 0


def test_serve_exits_non_zero_when_the_engine_thread_dies(tiny_model_dir: Path, tiny_engine: Any) -> None:
    faulty = FaultyEngine(tiny_engine)
    faulty.fail.set()  # the thread dies on its first loop
    config = ServerConfig(model=str(tiny_model_dir), port=0, metrics_port=0, grace_period_seconds=0)
    assert asyncio.run(serve(config, engine=faulty)) == 1


def test_a_conversion_error_fails_only_its_own_stream(
    tiny_model_dir: Path, tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault injected while converting one request's events: that call ends INTERNAL alone."""
    from server import convert

    real_chunk_response = convert.chunk_response

    def chunk_response(token_ids: Any, text: str, logprobs: Any, output: Any, *rest: Any) -> Any:
        if output.return_logprobs:  # only the request that asked for logprobs hits the fault
            raise RuntimeError("injected conversion fault")
        return real_chunk_response(token_ids, text, logprobs, output, *rest)

    monkeypatch.setattr(convert, "chunk_response", chunk_response)
    background = start_server(tiny_model_dir, tiny_engine)
    try:
        with LilClient(background.address) as client:
            healthy = client.generate("hello", max_new_tokens=200, ignore_eos=True)
            with pytest.raises(LilClientError) as failed:
                client.complete("hello", max_new_tokens=200, ignore_eos=True, return_logprobs=True)
            summary_tokens = sum(chunk.token_count for chunk in healthy)
        assert wait_until(lambda: _idle(background, tiny_engine))
        reasons = {
            dict(labels)["finish_reason"]: value
            for (name, labels), value in scrape(background.metrics_port).items()
            if name == "lil_sparse_requests_finished_total" and value
        }
    finally:
        background.stop()
    assert failed.value.code == grpc.StatusCode.INTERNAL
    assert failed.value.message.startswith("internal error (id ")
    assert summary_tokens == healthy.summary.completion_tokens == 200
    # The server cut the failed request: counted "aborted", not as a client's cancel.
    assert reasons == {"length": 1, "aborted": 1}
