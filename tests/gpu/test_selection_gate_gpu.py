"""``selection="when_faster"`` on FlashInfer with CUDA graphs: the gate's decisions change the
step's groups and layouts from step to step, and graph replay must still equal eager, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gpu_engine import gpu_engine

from lil_sparse.engine import LLMEngine
from lil_sparse.engine.selection_gate import SelectionCost
from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("flashinfer")

PROMPT_LENGTHS = (37, 90, 161)  # 3, 6 and 11 pages; budget 3 pages
MAX_NEW = (40, 25, 12)


def make_engine(model_dir: Path, cuda_graphs: bool, selection: str, cost: SelectionCost | None) -> LLMEngine:
    engine = gpu_engine(model_dir, cuda_graphs=cuda_graphs, selection=selection)
    if cost is not None:
        engine.runner.gate.cost = cost
    return engine


def run(model_dir: Path, policy: str, cuda_graphs: bool, selection: str, cost: SelectionCost | None = None):
    """Returns the reports, every step's logits and the gate's counters."""
    engine = make_engine(model_dir, cuda_graphs, selection, cost)
    logits: list[torch.Tensor] = []
    decode = engine.runner.decode

    def recording_decode(seqs, **kwargs):  # kwargs: a step launched ahead (overlap)
        out = decode(seqs, **kwargs)
        logits.append(out.float().clone())
        return out

    engine.runner.decode = recording_decode  # type: ignore[method-assign]
    gen = torch.Generator().manual_seed(11)
    prompts = [torch.randint(3, 384, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    options = [
        RequestOptions(
            stopping=StoppingOptions(max_new_tokens=n, ignore_eos=True),
            sparse=SparseOptions(policy=policy, budget_tokens=48, sink_tokens=16, dense_layers=1),
        )
        for n in MAX_NEW
    ]
    reports = engine.generate(prompts, options)
    stats = engine.runner.selection_stats()
    engine.close()
    return reports, logits, stats


def flipping_cost(model_dir: Path) -> SelectionCost:
    """A latency of 7 pages of K/V per KV head: the group pays while the 161-token request runs
    (8 + 3 pages over budget: 11 > 7 + about 1 of bounds) and not after it finished (at most
    5 + 2 pages over budget, against 7 + bounds)."""
    probe = make_engine(model_dir, cuda_graphs=False, selection="when_faster", cost=None)
    gate = probe.runner.gate
    latency_bytes = 7 * gate.num_kv_heads * gate.page_bytes
    probe.close()
    return SelectionCost(hbm_bytes_per_second=1e12, selection_latency_us=latency_bytes / 1e6)


def test_graph_replay_equals_eager_while_the_gate_flips(tiny_gqa2_dir):
    cost = flipping_cost(tiny_gqa2_dir)
    eager_reports, eager_logits, eager_stats = run(tiny_gqa2_dir, "quest", False, "when_faster", cost)
    graph_reports, graph_logits, graph_stats = run(tiny_gqa2_dir, "quest", True, "when_faster", cost)
    assert eager_stats == graph_stats  # host decisions: the same in both
    skipped = [r.kv.selection_skipped_steps for r in graph_reports]
    assert skipped[2] == 0 and skipped[1] > 0 and skipped[0] > 0  # it selected, then stopped
    for want, have in zip(eager_reports, graph_reports, strict=True):
        assert have.output_token_ids == want.output_token_ids
        assert have.kv.attended_pages_per_step == want.kv.attended_pages_per_step
    assert len(eager_logits) == len(graph_logits)
    assert all(torch.equal(a, b) for a, b in zip(eager_logits, graph_logits, strict=True))


@pytest.mark.parametrize("policy", ["quest", "infllm"])
def test_a_gated_batch_decodes_exactly_as_full(tiny_gqa2_dir, policy):
    """The default constants gate every step of a tiny model: the full-attention tokens."""
    gated, gated_logits, stats = run(tiny_gqa2_dir, policy, True, "when_faster")
    dense, dense_logits, _ = run(tiny_gqa2_dir, "full", True, "exact")
    assert stats["skipped_rows"][policy] > 0
    assert [r.output_token_ids for r in gated] == [r.output_token_ids for r in dense]
    assert [r.kv.attended_pages_per_step for r in gated] == [r.kv.attended_pages_per_step for r in dense]
    assert all(torch.equal(a, b) for a, b in zip(gated_logits, dense_logits, strict=True))
