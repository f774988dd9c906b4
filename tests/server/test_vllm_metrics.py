"""vLLM-named series and lil-sparse's savings series on /metrics, by exact value after requests."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lil_client import LilClient
from server_harness import scrape, start_server, wait_until

PAGE = 16


@pytest.fixture
def server(tiny_model_dir: Path, tiny_engine: Any) -> Iterator[Any]:
    background = start_server(tiny_model_dir, tiny_engine, served_model_name="tiny-vllm")
    yield background
    background.stop()


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _scrape_after(server: Any, requests: int) -> dict[Any, float]:
    """The samples once ``requests`` requests were counted and the engine went idle. The engine
    thread counts a request just after handing its stream the final event, and publishes the
    gauges after the step that finished it, so a scrape right after the stream may see neither."""

    def settled() -> bool:
        samples = scrape(server.metrics_port)
        counted = sum(v for (n, _), v in samples.items() if n == "vllm:request_success_total")
        running = sum(v for (n, _), v in samples.items() if n == "vllm:num_requests_running")
        return counted == requests and running == 0

    assert wait_until(settled)
    return scrape(server.metrics_port)


def test_vllm_named_series_after_one_request(server: Any) -> None:
    with LilClient(server.address) as client:
        summary = client.complete("The quick brown fox", max_new_tokens=8, ignore_eos=True)
    samples = _scrape_after(server, 1)
    name = {"model_name": "tiny-vllm"}
    assert _value(samples, "vllm:prompt_tokens_total", **name) == summary.prompt_tokens
    assert _value(samples, "vllm:generation_tokens_total", **name) == 8
    for reason, count in (("length", 1), ("stop", 0), ("abort", 0)):
        assert _value(samples, "vllm:request_success_total", finished_reason=reason, **name) == count
    assert _value(samples, "vllm:time_to_first_token_seconds_count", **name) == 1
    assert _value(samples, "vllm:time_to_first_token_seconds_sum", **name) == summary.timings.ttft_seconds
    assert _value(samples, "vllm:inter_token_latency_seconds_count", **name) == 7
    assert _value(samples, "vllm:e2e_request_latency_seconds_count", **name) == 1
    assert _value(samples, "vllm:e2e_request_latency_seconds_sum", **name) == summary.timings.jct_seconds
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert _value(samples, gauge, **name) == 0.0
    model = {"model": Path(server.server.config.model).name, "policy": "full"}
    # Dense decode reads every page: the fraction is exactly 1.
    assert _value(samples, "lil_sparse_attended_kv_fraction_sum", **model) == 1.0
    assert _value(samples, "lil_sparse_attended_kv_fraction_count", **model) == 1


def test_savings_series_for_sparse_guardian_request(server: Any) -> None:
    prompt = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. " * 3
    with LilClient(server.address) as client:
        summary = client.complete(
            prompt, max_new_tokens=300, ignore_eos=True, policy="quest", budget_tokens=2 * PAGE,
            dense_layers=0, guardian=True, guardian_interval_tokens=10, guardian_threshold_bytes=10_000,
        )  # fmt: skip
    samples = _scrape_after(server, 1)
    model = {"model": Path(server.server.config.model).name, "policy": "quest"}
    # The second check (20 tokens) stops; the pool thread may apply it a few tokens later.
    assert summary.finish_reason == "early_stop" and summary.guardian.stop_step == 20
    steps = summary.kv.attended_pages_per_step
    dense = sum(math.ceil((summary.prompt_tokens + k + 1) / PAGE) for k in range(len(steps)))
    assert _value(samples, "lil_sparse_attended_kv_fraction_sum", **model) == pytest.approx(
        sum(steps) / dense
    )
    assert sum(steps) / dense < 0.5  # two pages of a context over seven pages long
    assert _value(samples, "lil_sparse_early_stops_total", signal="guardian", **model) == 1
    assert (
        _value(samples, "lil_sparse_guardian_tokens_saved_total", **model) == 300 - summary.completion_tokens
    )
    assert _value(samples, "vllm:request_success_total", model_name="tiny-vllm", finished_reason="stop") == 1


def test_guardian_stops_are_counted_once_by_the_early_stop_signal(server: Any) -> None:
    """One series counts Guardian stops: early_stops_total{signal="guardian"}, which goes up with
    every request that finishes early_stop (action answer too) and never for a shadow Guardian.
    lil_sparse_guardian_early_stops_total counted the same requests and is gone (docs/deploy.md)."""
    # Every check after the first says stop (no 4 tokens grow the text by a million bytes).
    stop_at_8 = {"guardian": True, "guardian_interval_tokens": 4, "guardian_threshold_bytes": 10**6}
    with LilClient(server.address) as client:
        truncated = client.complete("hello", max_new_tokens=40, ignore_eos=True, **stop_at_8)
        answered = client.complete(
            "hello", max_new_tokens=40, ignore_eos=True, guardian_action="answer",
            guardian_answer_max_tokens=2, **stop_at_8,
        )  # fmt: skip
        shadow = client.complete(
            "hello", max_new_tokens=12, ignore_eos=True, guardian_shadow=True, **stop_at_8
        )
    reasons = (truncated.finish_reason, answered.finish_reason, shadow.finish_reason)
    assert reasons == ("early_stop", "early_stop", "length")
    assert shadow.guardian.stop_step == 8  # it would have stopped: shadow records, never counts
    samples = _scrape_after(server, 3)
    model = {"model": Path(server.server.config.model).name, "policy": "full"}
    assert _value(samples, "lil_sparse_early_stops_total", signal="guardian", **model) == 2
    assert _value(samples, "lil_sparse_requests_finished_total", finish_reason="early_stop", **model) == 2
    assert _value(samples, "lil_sparse_requests_finished_total", finish_reason="length", **model) == 1
    assert not [name for name, _ in samples if name.startswith("lil_sparse_guardian_early_stops")]
    saved = (40 - truncated.completion_tokens) + (40 - answered.completion_tokens)
    assert _value(samples, "lil_sparse_guardian_tokens_saved_total", **model) == saved
