"""End to end through the real SMG gateway: OpenAI HTTP in, lil-sparse workers over SMG gRPC.

Three workers on loopback: two serve model ``tiny`` with the server defaults (dense), one serves
``tiny-quest`` whose defaults are Quest at a 32-token budget with Guardian on. The gateway
(``smg launch --worker-urls grpc://...``) balances ``tiny`` round robin. Needs the ``smg``
console script (``pip install smg``, part of the dev extra); skipped without it.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from smg_harness import Gateway, finished, http_json, scrape, smg_binary, wait_until

from lil_sparse.options import GuardianOptions, RequestOptions, SparseOptions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(smg_binary() is None, reason="the smg gateway is not installed (pip install smg)"),
]
QUEST_DEFAULTS = RequestOptions(
    sparse=SparseOptions(policy="quest", budget_tokens=32, dense_layers=0),
    guardian=GuardianOptions(enabled=True, interval_tokens=8, threshold_bytes=1000),
)
MESSAGES = [{"role": "user", "content": "Natalia sold clips to 48 of her friends."}]


@pytest.fixture(scope="module")
def cluster(start_worker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    dense = [start_worker(), start_worker()]
    quest = start_worker(served_model_name="tiny-quest", default_options=QUEST_DEFAULTS)
    urls = [f"grpc://127.0.0.1:{worker.port}" for worker in (*dense, quest)]
    gateway = Gateway(urls, tmp_path_factory.mktemp("smg") / "gateway.log")
    try:
        gateway.wait_ready({"tiny", "tiny-quest"})
        yield {"gateway": gateway, "dense": dense, "quest": quest}
    finally:
        gateway.stop()


def _chat(gateway: Gateway, **body: Any) -> dict[str, Any]:
    status, reply = http_json(f"{gateway.url}/v1/chat/completions", {"messages": MESSAGES, **body})
    assert status == 200, reply
    return dict(reply)


def _stream_events(response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line.removeprefix("data: "))


def _open_stream(
    gateway: Gateway, **body: Any
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
    payload = json.dumps({"messages": MESSAGES, "stream": True, **body})
    connection.request("POST", "/v1/chat/completions", payload, {"content-type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    return connection, response


def test_smg_both_workers_serve(cluster: dict[str, Any]) -> None:
    dense = cluster["dense"]
    before = [finished(scrape(worker.metrics_port)) for worker in dense]
    replies = [_chat(cluster["gateway"], model="tiny", max_tokens=12) for _ in range(2)]

    def counted() -> list[float]:
        after = [finished(scrape(worker.metrics_port)) for worker in dense]
        return [a - b for a, b in zip(after, before, strict=True)]

    # Round robin: one each. (A worker counts a request just after streaming its last message.)
    assert wait_until(lambda: sum(counted()) == 2)
    assert counted() == [1, 1]
    # Same weights, greedy by the worker's default: both workers answer alike.
    assert replies[0]["choices"][0]["message"]["content"] == replies[1]["choices"][0]["message"]["content"]
    assert [reply["usage"]["completion_tokens"] for reply in replies] == [12, 12]
    assert [reply["choices"][0]["finish_reason"] for reply in replies] == ["length", "length"]


def test_smg_stream_matches_non_stream(cluster: dict[str, Any]) -> None:
    gateway = cluster["gateway"]
    whole = _chat(gateway, model="tiny", max_tokens=10)
    connection, response = _open_stream(gateway, model="tiny", max_tokens=10)
    events = list(_stream_events(response))
    connection.close()
    text = "".join(event["choices"][0]["delta"].get("content") or "" for event in events if event["choices"])
    reasons = [event["choices"][0]["finish_reason"] for event in events if event["choices"]]
    assert text == whole["choices"][0]["message"]["content"]
    assert reasons[-1] == "length" and reasons.count("length") == 1


def test_smg_dropped_stream_aborts_worker_request(cluster: dict[str, Any]) -> None:
    dense = cluster["dense"]
    # The client went away: the worker counts a cancel (docs/deploy.md), not the server's abort.
    before = sum(finished(scrape(worker.metrics_port), finish_reason="cancelled") for worker in dense)
    connection, response = _open_stream(cluster["gateway"], model="tiny", max_tokens=1900, ignore_eos=True)
    next(event for event in _stream_events(response) if event["choices"][0]["delta"].get("content"))
    connection.close()  # the HTTP client goes away mid-stream

    def aborted_and_freed() -> bool:
        samples = [scrape(worker.metrics_port) for worker in dense]
        aborted = sum(finished(s, finish_reason="cancelled") for s in samples) - before
        used = sum(
            v for s in samples for (name, _), v in s.items() if name == "lil_sparse_kv_cache_usage_ratio"
        )
        return aborted == 1 and used == 0.0

    assert wait_until(aborted_and_freed)
    samples = [scrape(worker.metrics_port) for worker in dense]
    assert all(
        value == 0.0
        for s in samples
        for (name, _), value in s.items()
        if name == "lil_sparse_requests_running"
    )


def test_smg_per_call_policy_reaches_worker(cluster: dict[str, Any]) -> None:
    """The model id picks the worker pool, and with it the policy and Guardian settings."""
    quest, dense = cluster["quest"], cluster["dense"]
    dense_before = [finished(scrape(worker.metrics_port)) for worker in dense]
    before = scrape(quest.metrics_port)
    reply = _chat(cluster["gateway"], model="tiny-quest", max_tokens=200, ignore_eos=True)
    assert wait_until(lambda: finished(scrape(quest.metrics_port)) - finished(before) == 1)
    after = scrape(quest.metrics_port)
    assert finished(after, policy="quest") - finished(before, policy="quest") == 1
    assert finished(after, policy="full") == finished(before, policy="full") == 0
    assert [finished(scrape(worker.metrics_port)) for worker in dense] == dense_before
    # Guardian fires at its first possible check (the threshold exceeds any growth), so the
    # answer stops after 16 tokens with OpenAI's "stop", long before max_tokens.
    key = (
        "lil_sparse_early_stops_total",
        (("model", Path(quest.server.config.model).name), ("policy", "quest"), ("signal", "guardian")),
    )
    assert after[key] - before.get(key, 0.0) == 1
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == 16


def test_smg_unsupported_option_is_a_client_error(cluster: dict[str, Any]) -> None:
    status, reply = http_json(
        f"{cluster['gateway'].url}/v1/chat/completions",
        {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "regex": "[0-9]+"},
    )
    assert status == 400, reply
    assert "structured generation is not supported" in json.dumps(reply)


def test_smg_probe_paths_of_the_helm_chart_answer(cluster: dict[str, Any]) -> None:
    """The chart's gateway probes (helm/lil-sparse/templates/gateway-deployment.yaml) hit these,
    and after the tests above (an abort, a refused option) all three workers still count healthy."""
    import urllib.request

    with urllib.request.urlopen(f"{cluster['gateway'].url}/liveness", timeout=10) as response:
        assert response.status == 200
    status, body = http_json(f"{cluster['gateway'].url}/readiness", timeout=10)
    assert (status, body["status"], body["healthy_workers"], body["total_workers"]) == (200, "ready", 3, 3)


def test_smg_openai_body_extras_do_not_reach_the_worker(cluster: dict[str, Any]) -> None:
    """What the README says of smg 1.13: extra body fields are dropped, so the model id is the
    per-call switch. Should a gateway start filling custom_params, this fails and the README's
    "Behind a gateway" needs updating (the worker already reads custom_params)."""
    dense = cluster["dense"]
    before = [finished(scrape(worker.metrics_port), policy="full") for worker in dense]
    extras = {"sparse": {"policy": "quest", "budget_tokens": 32}}
    _chat(cluster["gateway"], model="tiny", max_tokens=4, custom_params=extras, **extras)

    def counted() -> float:
        after = [finished(scrape(worker.metrics_port), policy="full") for worker in dense]
        return sum(after) - sum(before)

    assert wait_until(lambda: counted() == 1)
    assert sum(finished(scrape(worker.metrics_port), policy="quest") for worker in dense) == 0
