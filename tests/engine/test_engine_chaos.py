"""Chaos at the engine level: 500 requests of every kind, aborted at random points (before
admission included) while faults are injected into random requests' stages. Every stream equals
its report, every untouched request gets its solo tokens, and afterwards nothing is held."""

from __future__ import annotations

import random

import pytest

from lil_sparse.engine import LLMEngine
from lil_sparse.events import FinishReason
from lil_sparse.options import (
    GuardianOptions,
    RequestOptions,
    SamplingOptions,
    SparseOptions,
    StoppingOptions,
)

REQUESTS = 500
TEXT = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. "


def templates() -> list[RequestOptions]:
    out = []
    for index, policy in enumerate(["full", "sink", "h2o", "quest", "infllm"]):
        out.append(
            RequestOptions(
                sampling=SamplingOptions(temperature=[0.0, 0.9][index % 2], top_k=index * 3, seed=index),
                stopping=StoppingOptions(
                    max_new_tokens=4 + index, stop_strings=("\n\n",) if index == 2 else (), ignore_eos=True
                ),
                sparse=SparseOptions(policy=policy, budget_tokens=32, dense_layers=1),
                guardian=GuardianOptions(enabled=index == 1, interval_tokens=3, threshold_bytes=4),
            )
        )
    return out


def test_500_random_aborts_and_faults_leave_nothing_behind(
    engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(0)
    base = engine.tokenizer.encode(TEXT)
    prompts = [base[:12], base[:21], base]
    options = templates()
    solo = {
        (p, o): engine.generate([prompts[p]], [options[o]])[0]
        for p in range(len(prompts))
        for o in range(len(options))
    }
    faulty: set[str] = set()
    real_check = engine.stop_checker.check

    def check(seq, token, stop_string_hit):
        if seq.request_id in faulty and seq.num_output_tokens >= 2:
            raise RuntimeError("injected")
        return real_check(seq, token, stop_string_hit)

    monkeypatch.setattr(engine.stop_checker, "check", check)
    kinds: dict[str, tuple[int, int]] = {}
    abort_at: dict[str, int] = {}
    streamed: dict[str, tuple[list[int], str]] = {}
    reports = {}
    submitted = step = 0
    while submitted < REQUESTS or engine.has_unfinished():
        for _ in range(rng.randint(0, 3) if submitted < REQUESTS else 0):
            kind = (rng.randrange(len(prompts)), rng.randrange(len(options)))
            request_id = engine.add_request(prompts[kind[0]], options[kind[1]])
            kinds[request_id] = kind
            streamed[request_id] = ([], "")
            submitted += 1
            roll = rng.random()
            if roll < 0.1:
                engine.abort(request_id)  # before it was ever scheduled
            elif roll < 0.6:
                abort_at[request_id] = step + rng.randint(0, 6)
            elif roll < 0.65:
                faulty.add(request_id)
        for request_id, when in list(abort_at.items()):
            if when == step:
                engine.abort(request_id)
                del abort_at[request_id]
        for event in engine.step():
            tokens, text = streamed[event.request_id]
            streamed[event.request_id] = (tokens + list(event.token_ids), text + event.text_delta)
            if event.report is not None:
                reports[event.request_id] = event.report
        step += 1
    assert len(reports) == REQUESTS
    reasons = {reason: 0 for reason in FinishReason}
    for request_id, report in reports.items():
        reasons[report.finish_reason] += 1
        tokens, text = streamed[request_id]
        assert tokens == report.output_token_ids and text == report.output_text
        expected = solo[kinds[request_id]]
        if report.finish_reason in (FinishReason.ABORTED, FinishReason.ERROR):
            assert report.output_token_ids == expected.output_token_ids[: report.completion_tokens]
        else:
            assert report.output_token_ids == expected.output_token_ids
            assert report.finish_reason == expected.finish_reason
        if report.finish_reason == FinishReason.ERROR:
            assert request_id in faulty
    assert reasons[FinishReason.ABORTED] > 100 and reasons[FinishReason.ERROR] > 5
    assert reasons[FinishReason.LENGTH] > 50
    assert engine.pool.num_used == 0 and engine.scheduler.reserved_pages == 0
    assert engine.stats().num_running == engine.stats().num_waiting == 0
    assert not engine._outputs and not engine._finishing and not engine.guardian._pending
    monkeypatch.undo()
    assert engine.generate([base], [options[3]])[0].output_token_ids == solo[(2, 3)].output_token_ids
