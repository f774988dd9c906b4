"""Bad requests map to exact status codes and messages; internal errors never leak details."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from lil_client import LilClient, LilClientError
from lil_client._proto.lil_sparse.v1 import service_pb2, service_pb2_grpc
from server_harness import consume_in_background, start_server, wait_until

from lil_sparse.testing.step_hold import StepHold

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _req(text: str | None = "hello world", **groups: dict[str, Any]) -> service_pb2.GenerateRequest:
    request = service_pb2.GenerateRequest()
    if text is not None:
        request.text = text
    for group, fields in groups.items():
        for name, value in fields.items():
            setattr(getattr(request, group), name, value)
    return request


def _token_ids(ids: list[int], max_new_tokens: int | None = None) -> service_pb2.GenerateRequest:
    request = service_pb2.GenerateRequest()
    request.token_ids.ids.extend(ids)
    request.token_ids.SetInParent()
    if max_new_tokens is not None:
        request.stopping.max_new_tokens = max_new_tokens
    return request


def _empty_chat() -> service_pb2.GenerateRequest:
    request = service_pb2.GenerateRequest()
    request.chat.SetInParent()
    return request


BAD_REQUESTS = [
    (_req(sampling={"top_p": 1.5}), INVALID, "top_p: must be in (0, 1], got 1.5"),
    (_req(sampling={"temperature": -1.0}), INVALID, "temperature: must be >= 0, got -1.0"),
    (_req(sampling={"top_k": -3}), INVALID, "top_k: must be >= 0 (0 disables), got -3"),
    (_req(sampling={"seed": -1}), INVALID, "seed: must be in [0, 2^63) (int64), got -1"),
    (_req(stopping={"max_new_tokens": 0}), INVALID, "max_new_tokens: must be >= 1, got 0"),
    (
        _req(sparse={"policy": 4, "budget_tokens": 0}),
        INVALID,
        "budget_tokens: must be >= 16 (one page of 16 tokens), got 0",
    ),
    (
        _req(sparse={"policy": 4, "budget_tokens": 1}),
        INVALID,
        "budget_tokens: must be >= 16 (one page of 16 tokens), got 1",
    ),
    (
        _req(sparse={"policy": 1, "budget_tokens": -3}),
        INVALID,
        "budget_tokens: must be >= 16 (one page of 16 tokens), got -3",
    ),
    (
        _req(sparse={"policy": 4, "dense_layers": 5}),
        INVALID,
        "dense_layers: must be below the model's 2 layers for quest (with 5 dense layers no layer "
        "would select pages; use policy 'full'), got 5",
    ),
    (_req(sparse={"policy": 99}), INVALID, "policy: unknown enum value 99"),
    (
        _req(guardian={"enabled": True, "interval_tokens": 0}),
        INVALID,
        "interval_tokens: must be >= 1 (a threshold needs an interval), got 0",
    ),
    (_req(guardian={"threshold_bytes": -1}), INVALID, "threshold_bytes: must be >= 0, got -1"),
    (_req(text=None), INVALID, "input: set one of text, chat or token_ids"),
    (_req(text=""), INVALID, "text: the prompt is empty"),
    (_empty_chat(), INVALID, "messages: at least one message is required"),
    (
        _token_ids([1, 2, 1000]),
        INVALID,
        "token_ids: id 1000 at position 2 is outside the vocabulary [0, 384)",
    ),
    (_token_ids([1, -2]), INVALID, "token_ids: id -2 at position 1 is outside the vocabulary [0, 384)"),
    (
        _token_ids([5, 6], max_new_tokens=4000),
        grpc.StatusCode.OUT_OF_RANGE,
        "max_new_tokens: the prompt (2 tokens) plus max_new_tokens (4000) exceeds the model context of "
        "2048 tokens; at most 2046 fit",
    ),
]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tiny_engine: Any) -> Iterator[Any]:
    background = start_server(tiny_model_dir, tiny_engine, max_running=1, max_waiting=0)
    yield background
    background.stop()


@pytest.mark.parametrize(("request_message", "code", "message"), BAD_REQUESTS)
def test_bad_request_status(server: Any, request_message: Any, code: grpc.StatusCode, message: str) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.LilSparseServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.Generate(request_message))
    assert raised.value.code() == code
    assert raised.value.details() == message


def test_queue_full_is_resource_exhausted(
    server: Any, tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = StepHold.install(monkeypatch, tiny_engine)  # the long stream keeps its slot meanwhile
    with LilClient(server.address) as client:
        long_stream = client.generate("hello", max_new_tokens=2000, ignore_eos=True)
        consumer, first_chunk, _ = consume_in_background(long_stream, hold.hold)
        assert first_chunk.wait(30)
        with pytest.raises(LilClientError) as raised:
            client.complete("hello", max_new_tokens=2)
        long_stream.cancel()
        hold.release()
        consumer.join(30)
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.message == (
        "queue full: 1 requests running or waiting (max_running 1 + max_waiting 0); retry later"
    )
    assert wait_until(lambda: server.server.engine_loop.in_flight == 0)


def test_deadline_is_deadline_exceeded(server: Any) -> None:
    with LilClient(server.address) as client, pytest.raises(LilClientError) as raised:
        client.complete("hello", max_new_tokens=2000, ignore_eos=True, timeout=0.5)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server aborted the request: its slot and pages come back.
    assert wait_until(lambda: server.server.engine_loop.in_flight == 0)


def test_duplicate_request_id_is_invalid(
    server: Any, tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = StepHold.install(monkeypatch, tiny_engine)  # the first "same" stays in flight meanwhile
    with LilClient(server.address) as client:
        stream = client.generate("hello", max_new_tokens=2000, ignore_eos=True, request_id="same")
        consumer, first_chunk, _ = consume_in_background(stream, hold.hold)
        assert first_chunk.wait(30)
        # Checked before the queue limit (1 here), so the duplicate gets its own message.
        with pytest.raises(LilClientError) as raised:
            client.complete("hello", request_id="same")
        stream.cancel()
        hold.release()
        consumer.join(30)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == "request_id: 'same' is already in flight"
    assert wait_until(lambda: server.server.engine_loop.in_flight == 0)
