"""Cancelling frees pages; the metrics endpoint moves by exactly what the requests did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lil_client import LilClient
from server_harness import consume_in_background, scrape, start_server, wait_until

from lil_sparse.testing.step_hold import StepHold

MODEL_LABEL: tuple[tuple[str, str], ...] = ()


@pytest.fixture
def server(tiny_model_dir: Path, tiny_engine: Any) -> Iterator[Any]:
    background = start_server(tiny_model_dir, tiny_engine)
    yield background
    background.stop()


def _gauge(samples: dict[Any, float], name: str, model: str) -> float:
    return samples[(name, (("model", model),))]


def test_cancel_mid_stream_frees_pages(
    server: Any, tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = server.server.metrics.model
    hold = StepHold.install(monkeypatch, tiny_engine)  # the stream is mid-way when cancelled
    with LilClient(server.address) as client:
        stream = client.generate("hello there " * 20, max_new_tokens=1500, ignore_eos=True)
        consumer, first_chunk, errors = consume_in_background(stream, hold.hold)
        assert first_chunk.wait(30)
        assert wait_until(
            lambda: _gauge(scrape(server.metrics_port), "lil_sparse_requests_running", model) == 1
        )
        busy = scrape(server.metrics_port)
        assert _gauge(busy, "lil_sparse_kv_cache_usage_ratio", model) > 0
        assert tiny_engine.stats().kv_pages_used > 0
        stream.cancel()
        hold.release()
        consumer.join(30)
    assert [error.code.name for error in errors] == ["CANCELLED"]

    def idle() -> bool:
        samples = scrape(server.metrics_port)
        return (
            _gauge(samples, "lil_sparse_requests_running", model) == 0
            and _gauge(samples, "lil_sparse_kv_cache_usage_ratio", model) == 0
        )

    assert wait_until(idle)
    assert tiny_engine.stats().kv_pages_used == 0
    assert server.server.engine_loop.in_flight == 0
    # The client went away: counted as a cancel, not as the server's abort (the alert's series).
    counted = scrape(server.metrics_port)
    finished = {
        dict(labels)["finish_reason"]: value
        for (name, labels), value in counted.items()
        if name == "lil_sparse_requests_finished_total" and value
    }
    assert finished == {"cancelled": 1}
    vllm = ("vllm:request_success_total", (("finished_reason", "abort"), ("model_name", model)))
    assert counted.get(vllm) == 1  # vLLM's series counts a client's abort as "abort", as vLLM does


def test_metrics_move_by_the_right_amount(server: Any) -> None:
    model = server.server.metrics.model
    full = (("model", model), ("policy", "full"))
    sink = (("model", model), ("policy", "sink"))
    with LilClient(server.address) as client:
        plain = [client.complete("hello world", max_new_tokens=5, ignore_eos=True) for _ in range(2)]
        sparse = client.complete(
            "hello world", max_new_tokens=6, ignore_eos=True, policy="sink", budget_tokens=32
        )
        # Threshold far above any growth: the first check with a previous size says stop.
        guarded = client.complete(
            "hello world",
            max_new_tokens=200,
            ignore_eos=True,
            guardian=True,
            guardian_interval_tokens=4,
            guardian_threshold_bytes=10_000,
        )
    assert guarded.finish_reason == "early_stop"
    samples = scrape(server.metrics_port)

    def value(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        return samples.get((name, labels), 0.0)

    plain_tokens = sum(s.completion_tokens for s in plain) + guarded.completion_tokens
    assert value("lil_sparse_generation_tokens_total", full) == plain_tokens
    assert value("lil_sparse_generation_tokens_total", sink) == 6
    assert value("lil_sparse_prompt_tokens_total", full) == 3 * plain[0].prompt_tokens
    assert value("lil_sparse_prompt_tokens_total", sink) == sparse.prompt_tokens
    length_full = (("finish_reason", "length"), *full)
    assert value("lil_sparse_requests_finished_total", length_full) == 2
    assert value("lil_sparse_requests_finished_total", (("finish_reason", "length"), *sink)) == 1
    assert value("lil_sparse_requests_finished_total", (("finish_reason", "early_stop"), *full)) == 1
    assert value("lil_sparse_early_stops_total", (*full, ("signal", "guardian"))) == 1
    assert value("lil_sparse_early_stops_total", (*sink, ("signal", "guardian"))) == 0
    for histogram in (
        "lil_sparse_time_to_first_token_seconds",
        "lil_sparse_e2e_request_latency_seconds",
        "lil_sparse_request_queue_time_seconds",
    ):
        assert value(f"{histogram}_count", full) == 3, histogram
        assert value(f"{histogram}_count", sink) == 1, histogram
    gaps = sum(s.completion_tokens - 1 for s in (*plain, guarded))
    assert value("lil_sparse_inter_token_latency_seconds_count", full) == gaps
    assert value("lil_sparse_inter_token_latency_seconds_count", sink) == 5
    assert value("lil_sparse_guardian_check_seconds_count", full) == guarded.guardian.checks >= 2
    assert value("lil_sparse_e2e_request_latency_seconds_sum", full) == pytest.approx(
        sum(s.timings.jct_seconds for s in (*plain, guarded))
    )
    # No series is labelled with a request id.
    assert all(label != "request_id" for _, labels in samples for label, _ in labels)
