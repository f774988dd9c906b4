"""A real in-process server streaming from the tiny model: order, counts, options, concurrency."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from lil_client import LilClient
from lil_client._proto.lil_sparse.v1 import options_pb2, report_pb2, service_pb2, service_pb2_grpc
from server_harness import start_server

from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions

PROMPT = "The quick brown fox jumps over the lazy dog. " * 8  # ~100 tokens: several KV pages


@pytest.fixture
def server(tiny_model_dir: Path, tiny_engine: Any) -> Iterator[Any]:
    background = start_server(tiny_model_dir, tiny_engine)
    yield background
    background.stop()


def _request(**sparse: Any) -> service_pb2.GenerateRequest:
    request = service_pb2.GenerateRequest(text=PROMPT)
    request.stopping.max_new_tokens = 12
    request.stopping.ignore_eos = True
    request.output.return_token_ids = True
    request.output.return_logprobs = True
    for name, value in sparse.items():
        setattr(request.sparse, name, value)
    return request


def test_stream_is_started_chunks_then_one_finished(server: Any, tiny_engine: Any) -> None:
    with grpc.insecure_channel(server.address) as channel:
        responses = list(service_pb2_grpc.LilSparseServiceStub(channel).Generate(_request()))
    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds[0] == "started"
    assert kinds[-1] == "finished"
    assert kinds.count("started") == 1 and kinds.count("finished") == 1
    assert set(kinds[1:-1]) == {"chunk"}

    started, finished = responses[0].started, responses[-1].finished
    chunks = [r.chunk for r in responses[1:-1]]
    token_ids = [t for c in chunks for t in c.token_ids]
    assert started.prompt_tokens == len(tiny_engine.tokenizer.encode(PROMPT))
    assert sum(c.token_count for c in chunks) == len(token_ids) == 12
    assert sum(len(c.logprobs) for c in chunks) == 12
    assert finished.usage.completion_tokens == 12
    assert finished.usage.prompt_tokens == started.prompt_tokens
    assert finished.finish_reason == report_pb2.FINISH_REASON_LENGTH
    assert "".join(c.text for c in chunks) == tiny_engine.tokenizer.decode(token_ids)
    # The resolved options echo the request over the server defaults.
    assert started.options.stopping.max_new_tokens == 12
    assert started.options.sparse.policy == options_pb2.POLICY_FULL
    assert started.options.guardian.mode == options_pb2.GUARDIAN_MODE_FULL
    assert finished.timings.jct_seconds >= finished.timings.ttft_seconds > 0
    assert len(finished.kv.attended_pages_per_step) == 11  # the first token comes from prefill
    assert finished.kv.peak_pages > 0


def test_stream_matches_the_engine_run_alone(server: Any, tiny_engine: Any) -> None:
    with LilClient(server.address) as client:
        summary = client.complete(PROMPT, max_new_tokens=12, ignore_eos=True, return_token_ids=True)
    # Run the engine directly once the server is gone (the engine is single-threaded).
    server.stop()
    prompt_ids = tiny_engine.tokenizer.encode(PROMPT)
    options = RequestOptions(stopping=StoppingOptions(max_new_tokens=12, ignore_eos=True))
    (report,) = tiny_engine.generate([prompt_ids], [options])
    assert list(summary.token_ids) == report.output_token_ids
    assert summary.text == report.output_text


def test_concurrent_streams_with_different_policies(tiny_model_dir: Path, tiny_engine: Any) -> None:
    """Full and Quest run together; each reports the attended pages of its own solo engine run."""
    prompt_ids = tiny_engine.tokenizer.encode(PROMPT)
    stopping = StoppingOptions(max_new_tokens=12, ignore_eos=True)
    quest = SparseOptions(policy="quest", budget_tokens=32, dense_layers=0)
    (solo_full,) = tiny_engine.generate([prompt_ids], [RequestOptions(stopping=stopping)])
    (solo_quest,) = tiny_engine.generate([prompt_ids], [RequestOptions(stopping=stopping, sparse=quest)])

    background = start_server(tiny_model_dir, tiny_engine)
    results: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def run(name: str, **options: Any) -> None:
        with LilClient(background.address) as client:
            barrier.wait()
            results[name] = client.complete(PROMPT, max_new_tokens=12, ignore_eos=True, **options)

    threads = [
        threading.Thread(target=run, args=("full",), kwargs={"policy": "full"}),
        threading.Thread(
            target=run, args=("quest",), kwargs={"policy": "quest", "budget_tokens": 32, "dense_layers": 0}
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    background.stop()

    full, sparse = results["full"].kv, results["quest"].kv
    assert list(full.attended_pages_per_step) == [float(p) for p in solo_full.kv.attended_pages_per_step]
    assert list(sparse.attended_pages_per_step) == [float(p) for p in solo_quest.kv.attended_pages_per_step]
    assert sparse.mean_attended_pages < full.mean_attended_pages
    assert results["quest"].text == solo_quest.output_text
    assert results["full"].text == solo_full.output_text
