"""``EngineConfig.selection="when_faster"`` end to end on the tiny model (CPU, fp32, greedy).

Where the gate fires, a selecting request attends every held page: its tokens are exactly those
of the same request under ``full``, and its KV report shows every held page attended. Where it
does not fire, the tokens are those of ``"exact"``. The tiny model: 2 layers, 2 KV heads,
head_dim 16, fp32, page size 16, so a page's K+V is 2 * 16 * 16 * 4 = 2048 bytes; Quest reads
2 * 16 * 4 = 128 metadata bytes per held page, InfLLM 16 * 4 = 64.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.engine.selection_gate import SelectionCost
from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions

PAGE_SIZE = 16
BUDGET_TOKENS = 64  # 4 pages
MAX_NEW = 12  # the first token comes from prefill: 11 decode steps


def options(policy: str) -> RequestOptions:
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=MAX_NEW, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=BUDGET_TOKENS, sink_tokens=16, dense_layers=1),
    )


def prompts(*lengths: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(3, 300, (n,), generator=gen).tolist() for n in lengths]


def run(model_dir: Path, policies: tuple[str, ...], lengths: tuple[int, ...], selection: str, cost=None):
    """Returns the reports and the runner's gate counters."""
    engine = LLMEngine.from_config(
        EngineConfig(
            model=str(model_dir),
            kv_cache_tokens=4096,
            max_batch_size=4,
            guardian_workers=0,
            poison_freed_pages=True,
            selection=selection,
        )
    )
    if cost is not None:
        engine.runner.gate.cost = cost
    reports = engine.generate(prompts(*lengths), [options(p) for p in policies])
    stats = engine.runner.selection_stats()
    engine.close()
    return reports, stats


def held_pages_per_step(prompt_tokens: int) -> list[int]:
    """Pages held in each decode step: step i writes position prompt_tokens + i."""
    return [(prompt_tokens + step) // PAGE_SIZE + 1 for step in range(MAX_NEW - 1)]


@pytest.mark.parametrize("policy", ["quest", "infllm"])
def test_when_selection_cannot_pay_requests_over_budget_attend_densely(tiny_model_dir, policy):
    """The default constants (268,800,000 latency bytes per selecting layer) dwarf anything the
    tiny model could save (two requests of 7-8 pages, budget 4: at most 2 * 2 * 4 * 2048 bytes),
    so the gate fires in every step: the tokens are the full-attention tokens."""
    gated, stats = run(tiny_model_dir, (policy, policy), (100, 110), "when_faster")
    dense, _ = run(tiny_model_dir, ("full", "full"), (100, 110), "exact")
    exact, _ = run(tiny_model_dir, (policy, policy), (100, 110), "exact")
    for ours, full, selected, length in zip(gated, dense, exact, (100, 110), strict=True):
        assert ours.output_token_ids == full.output_token_ids
        assert ours.kv.attended_pages_per_step == held_pages_per_step(length)
        assert ours.kv.attended_pages_per_step == full.kv.attended_pages_per_step
        assert ours.kv.selection_skipped_steps == MAX_NEW - 1
        assert selected.kv.selection_skipped_steps == 0
        # exact really selected 4 pages per sparse layer (quest's first layer attends densely).
        dense_layers = 1 if policy == "quest" else 0
        held = held_pages_per_step(length)
        expected = [round((h * dense_layers + 4 * (2 - dense_layers)) / 2) for h in held]
        assert selected.kv.attended_pages_per_step == expected
    assert stats == {"skipped_rows": {policy: 2 * (MAX_NEW - 1)}, "skipped_groups": {policy: MAX_NEW - 1}}


def test_when_selection_pays_when_faster_equals_exact(tiny_model_dir):
    """No fixed latency: a request 3+ pages over its budget saves 3 * 2048 bytes per head against
    at most 8 * 128 of bounds, so every step selects, exactly as under ``"exact"``."""
    free = SelectionCost(selection_latency_us=0.0)
    gated, stats = run(tiny_model_dir, ("quest", "infllm"), (100, 110), "when_faster", free)
    exact, _ = run(tiny_model_dir, ("quest", "infllm"), (100, 110), "exact")
    for ours, theirs in zip(gated, exact, strict=True):
        assert ours.output_token_ids == theirs.output_token_ids
        assert ours.kv.attended_pages_per_step == theirs.kv.attended_pages_per_step
        assert ours.kv.selection_skipped_steps == 0
    assert stats == {"skipped_rows": {}, "skipped_groups": {}}


def test_the_gate_fires_for_one_policy_group_and_not_another(tiny_model_dir):
    """Latency 30,000 bytes. Quest at 300 prompt tokens (19-19 pages, budget 4) saves
    2 * 15 * 2048 = 61,440+ against 30,000 + 2 * 19 * 128 = 34,864+: it selects. InfLLM at 100
    tokens (7-7 pages) saves 2 * 3 * 2048 = 12,288 against 30,000 + 896: it attends densely, so its
    tokens are the ``full`` request's in the same batch."""
    cost = SelectionCost(hbm_bytes_per_second=1e12, selection_latency_us=0.03)
    gated, stats = run(tiny_model_dir, ("quest", "infllm"), (300, 100), "when_faster", cost)
    reference, _ = run(tiny_model_dir, ("quest", "full"), (300, 100), "exact")
    assert [r.output_token_ids for r in gated] == [r.output_token_ids for r in reference]
    assert [r.kv.attended_pages_per_step for r in gated] == [r.kv.attended_pages_per_step for r in reference]
    assert gated[1].kv.attended_pages_per_step == held_pages_per_step(100)
    assert [r.kv.selection_skipped_steps for r in gated] == [0, MAX_NEW - 1]
    assert stats == {"skipped_rows": {"infllm": MAX_NEW - 1}, "skipped_groups": {"infllm": MAX_NEW - 1}}
