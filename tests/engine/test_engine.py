"""End-to-end engine behaviour on tiny random models: correctness, pages, batching, errors."""

from __future__ import annotations

import pytest
import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.events import FinishReason
from lil_sparse.models.dense_attention import DenseCausalAttention
from lil_sparse.options import (
    POLICY_NAMES,
    GuardianOptions,
    RequestOptions,
    SamplingOptions,
    SparseOptions,
    StoppingOptions,
)

PROMPT_TEXT = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " * 2
)


def options(policy: str = "full", budget: int = 32, max_new: int = 40, **sampling) -> RequestOptions:
    return RequestOptions(
        sampling=SamplingOptions(**sampling),
        stopping=StoppingOptions(max_new_tokens=max_new, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=budget, dense_layers=1),
    )


def test_full_policy_equals_dense_attention(engine: LLMEngine) -> None:
    prompt = engine.tokenizer.encode(PROMPT_TEXT)
    report = engine.generate([prompt], [options("full", max_new=32)])[0]
    model = engine.runner.model
    tokens = list(prompt)
    with torch.inference_mode():
        for expected in report.output_token_ids:
            ids = torch.tensor(tokens)
            hidden = model(ids, torch.arange(len(tokens)), DenseCausalAttention())
            logits = model.compute_logits(hidden[-1:])
            tokens.append(int(logits.argmax()))
            assert tokens[-1] == expected
    assert report.completion_tokens == 32


def test_full_policy_logits_match_dense_recompute(engine: LLMEngine) -> None:
    prompt = engine.tokenizer.encode(PROMPT_TEXT)
    report = engine.generate([prompt], [options("full", max_new=20)])[0]
    model = engine.runner.model
    sequence = prompt + report.output_token_ids
    with torch.inference_mode():
        hidden = model(torch.tensor(sequence), torch.arange(len(sequence)), DenseCausalAttention())
        logprobs = model.compute_logits(hidden).log_softmax(-1)
    # logprob of each generated token under the dense model, against what the engine reported
    dense = [float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(report.output_token_ids)]
    engine_logprobs = []
    eng2 = engine
    rid = eng2.add_request(prompt, options("full", max_new=20))
    while eng2.has_unfinished():
        for event in eng2.step():
            if event.request_id == rid:
                engine_logprobs.extend(event.logprobs)
    assert engine_logprobs == pytest.approx(dense, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_a_budget_above_the_sequence_equals_full(engine: LLMEngine, policy: str) -> None:
    prompt = engine.tokenizer.encode(PROMPT_TEXT)
    full = engine.generate([prompt], [options("full")])[0].output_token_ids
    sparse = engine.generate([prompt], [options(policy, budget=4096)])[0].output_token_ids
    assert sparse == full


def test_small_budgets_change_what_is_attended(engine: LLMEngine) -> None:
    prompt = engine.tokenizer.encode(PROMPT_TEXT)
    reports = engine.generate([prompt] * 5, [options(p, budget=32) for p in POLICY_NAMES])
    attended = {p: r.kv.attended_pages_per_step for p, r in zip(POLICY_NAMES, reports, strict=True)}
    assert attended["full"][-1] > attended["quest"][-1] >= 2
    assert attended["sink"][-1] == attended["h2o"][-1] == attended["infllm"][-1] == 2


def test_mixed_policy_batch_gives_each_request_its_solo_tokens(engine: LLMEngine) -> None:
    prompt = engine.tokenizer.encode(PROMPT_TEXT)
    requests = [options(p, budget=b) for p in POLICY_NAMES for b in (32, 64)]
    alone = [engine.generate([prompt], [o])[0].output_token_ids for o in requests]
    # Different prompt lengths too, so rows differ in pages held.
    together = engine.generate([prompt] * len(requests), requests)
    assert [r.output_token_ids for r in together] == alone


def test_eviction_keeps_pages_within_budget_and_frees_everything(engine: LLMEngine) -> None:
    prompt = engine.tokenizer.encode(PROMPT_TEXT)
    start_free = engine.pool.num_free
    budget_pages = 3
    ids = [
        engine.add_request(prompt, options(p, budget=budget_pages * 16, max_new=70)) for p in ("sink", "h2o")
    ]
    peak = 0
    while engine.has_unfinished():
        engine.step()
        for seq in engine.scheduler.running:
            assert seq.held_pages <= budget_pages + 1
            peak = max(peak, seq.held_pages)
    assert peak == budget_pages
    assert engine.pool.num_free == start_free
    assert ids


def test_abort_frees_pages_and_reports_aborted(engine: LLMEngine) -> None:
    prompt = engine.tokenizer.encode(PROMPT_TEXT)
    start_free = engine.pool.num_free
    rid = engine.add_request(prompt, options("quest", max_new=200))
    for _ in range(5):
        engine.step()
    assert engine.pool.num_free < start_free
    engine.abort(rid)
    events = engine.step()
    final = [e for e in events if e.request_id == rid]
    assert final and final[-1].finish_reason == FinishReason.ABORTED
    assert final[-1].report is not None and final[-1].report.completion_tokens == 5
    assert engine.pool.num_free == start_free
    assert not engine.has_unfinished()


def test_seeded_sampling_is_batch_invariant(engine: LLMEngine) -> None:
    prompt = engine.tokenizer.encode(PROMPT_TEXT)
    sampled = options("full", temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    alone = engine.generate([prompt], [sampled])[0].output_token_ids
    others = [options("quest", temperature=1.0, seed=s) for s in range(3)]
    batch = engine.generate(
        [prompt[:40], prompt, prompt[:20], prompt], [others[0], sampled, others[1], others[2]]
    )
    assert batch[1].output_token_ids == alone
    different_seed = engine.generate([prompt], [options("full", temperature=0.9, seed=99)])[
        0
    ].output_token_ids
    assert different_seed != alone


def test_stop_reasons(engine: LLMEngine) -> None:
    prompt = engine.tokenizer.encode(PROMPT_TEXT)
    base = engine.generate([prompt], [options("full", max_new=30)])[0]
    assert base.finish_reason == FinishReason.LENGTH and base.completion_tokens == 30
    # A stop string taken from the middle of the greedy output stops there.
    text = base.output_text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    if stop.strip():
        stopped = engine.generate(
            [prompt],
            [
                RequestOptions(
                    stopping=StoppingOptions(max_new_tokens=30, stop_strings=(stop,), ignore_eos=True)
                )
            ],
        )[0]
        assert stopped.finish_reason == FinishReason.STOP_STRING
        assert stop in stopped.output_text and stopped.completion_tokens < 30
    # EOS: make the first generated token an EOS id and stop on it.
    eos_engine_tokens = engine.tokenizer.eos_token_ids
    assert eos_engine_tokens


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: SparseOptions(policy="bogus"), "policy"),
        # Below one page (0, -1) is refused against the page size: test_sparse_validation.py.
        (lambda: SparseOptions(budget_tokens=2**31), "budget_tokens"),
        (lambda: SparseOptions(sink_tokens=-4), "sink_tokens"),
        (lambda: SamplingOptions(temperature=-1.0), "temperature"),
        (lambda: SamplingOptions(top_p=0.0), "top_p"),
        (lambda: StoppingOptions(max_new_tokens=0), "max_new_tokens"),
        (lambda: GuardianOptions(enabled=True, interval_tokens=0, threshold_bytes=20), "interval_tokens"),
        (lambda: GuardianOptions(threshold_bytes=-1), "threshold_bytes"),
    ],
)
def test_bad_options_name_the_field(make, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        make()


def test_budget_below_one_page_and_context_overflow_are_rejected(engine: LLMEngine) -> None:
    prompt = engine.tokenizer.encode(PROMPT_TEXT)
    with pytest.raises(ValueError, match=r"^budget_tokens:"):
        engine.add_request(prompt, options("quest", budget=8))
    with pytest.raises(ValueError, match=r"^max_new_tokens:"):
        engine.add_request(prompt, options("full", max_new=engine.max_context))
    with pytest.raises(ValueError, match=r"^dense_layers:"):
        engine.add_request(
            prompt, RequestOptions(sparse=SparseOptions(policy="quest", budget_tokens=64, dense_layers=99))
        )
    assert not engine.has_unfinished()


def test_qwen2_with_one_kv_head_runs_every_policy(tiny_qwen_dir) -> None:
    eng = LLMEngine.from_config(
        EngineConfig(model=str(tiny_qwen_dir), kv_cache_tokens=2048, guardian_workers=0)
    )
    prompt = eng.tokenizer.encode(PROMPT_TEXT)
    reports = eng.generate([prompt] * 5, [options(p, budget=32, max_new=24) for p in POLICY_NAMES])
    assert all(r.completion_tokens == 24 for r in reports)
    assert eng.pool.num_used == 0
    eng.close()
