"""The selection gate's rule and decision (lil_sparse/engine/selection_gate.py), on host ints.

Every expected value is computed by hand in the comments: saved = sum(held - select) * page
bytes; cost = latency bytes + sum(held) * metadata bytes per page; select only if saved > cost.
"""

from __future__ import annotations

import pytest
import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine.selection_gate import SelectionCost, SelectionGate
from lil_sparse.engine.sequence import Sequence
from lil_sparse.options import RequestOptions, SparseOptions
from lil_sparse.policies import POLICIES

BF16_PAGE_BYTES = 2 * 16 * 128 * 2  # K+V, page size 16, head_dim 128, bf16: 8192
QUEST_BF16_METADATA = 2 * 128 * 2  # key min and max: 512


def test_latency_bytes_are_latency_times_bandwidth():
    assert SelectionCost(hbm_bytes_per_second=4.2e12, selection_latency_us=64.0).latency_bytes == 268_800_000
    assert SelectionCost(hbm_bytes_per_second=1e12, selection_latency_us=0.0).latency_bytes == 0


def test_selection_that_saves_more_than_it_costs_pays():
    cost = SelectionCost(hbm_bytes_per_second=1e12, selection_latency_us=1.0)  # 1,000,000 bytes
    # Two heads of a row holding 300 pages, selecting 64: saved 2 * 236 * 8192 = 3,866,624;
    # cost 1,000,000 + 600 * 512 = 1,307,200.
    assert cost.pays([(300, 64)] * 2, BF16_PAGE_BYTES, QUEST_BF16_METADATA)


def test_selection_that_saves_less_than_it_costs_does_not_pay():
    cost = SelectionCost(hbm_bytes_per_second=1e12, selection_latency_us=1.0)
    # 70 pages selecting 64, two heads: saved 2 * 6 * 8192 = 98,304; cost 1,000,000 + 140 * 512.
    assert not cost.pays([(70, 64)] * 2, BF16_PAGE_BYTES, QUEST_BF16_METADATA)
    # Without any fixed latency the metadata alone can outweigh a small saving:
    # 17 pages selecting 16: saved 8192 < 17 * 512 = 8704.
    free = SelectionCost(hbm_bytes_per_second=1e12, selection_latency_us=0.0)
    assert not free.pays([(17, 16)], BF16_PAGE_BYTES, QUEST_BF16_METADATA)
    assert free.pays([(18, 16)], BF16_PAGE_BYTES, QUEST_BF16_METADATA)  # 16,384 > 9,216


def test_a_tie_attends_densely_and_one_byte_more_selects():
    cost = SelectionCost(hbm_bytes_per_second=1e6, selection_latency_us=10.0)  # 10 bytes
    # saved (5 - 4) * 20 = 20; cost 10 + 5 * 2 = 20: a tie, dense.
    assert not cost.pays([(5, 4)], 20, 2)
    # saved 21; cost 20.
    assert cost.pays([(5, 4)], 21, 2)


def test_default_constants_at_the_bench_shapes():
    """qwen1.5b (2 KV heads, head_dim 128, bf16), quest budget 1024 tokens (64 pages), with the
    default constants (24 us x 4.2e12 B/s = 100,800,000 latency bytes per selecting layer); the
    H200 run the constants come from measured dense faster at 4k / batch 1 and 32k / batch 1, and
    Quest faster at 32k / batch 8."""
    cost = SelectionCost()
    assert cost.latency_bytes == 100_800_000
    # 4k context, batch 1: saved 2 * 192 * 8192 = 3,145,728, far below the latency: dense.
    assert not cost.pays([(256, 64)] * 2, BF16_PAGE_BYTES, QUEST_BF16_METADATA)
    # 32k context, batch 1: saved 2 * 1984 * 8192 = 32,505,856 < 100,800,000 + 2,097,152: dense.
    assert not cost.pays([(2048, 64)] * 2, BF16_PAGE_BYTES, QUEST_BF16_METADATA)
    # 32k context, batch 8: saved 16 * 1984 * 8192 = 260,046,848 > 100,800,000 + 16,777,216: selects.
    assert cost.pays([(2048, 64)] * 16, BF16_PAGE_BYTES, QUEST_BF16_METADATA)


def test_each_policy_names_the_metadata_its_selection_reads():
    by_dtype = {
        dtype: {name: p.metadata_bytes_per_page(128, dtype) for name, p in POLICIES.items()}
        for dtype in (torch.bfloat16, torch.float32)
    }
    # Quest: min and max in the cache dtype; InfLLM: the key mean in the cache dtype; the others none.
    assert by_dtype[torch.bfloat16] == {"full": 0, "sink": 0, "h2o": 0, "quest": 512, "infllm": 256}
    assert by_dtype[torch.float32] == {"full": 0, "sink": 0, "h2o": 0, "quest": 1024, "infllm": 512}


def sequence(policy: str, held: int, budget: int = 4) -> Sequence:
    options = RequestOptions(sparse=SparseOptions(policy=policy, budget_tokens=budget * 16))
    return Sequence(f"{policy}-{held}", [1], options, budget, 1, 1, 0, held_pages=held)


def gate(mode: str, latency_us: float) -> SelectionGate:
    """Two KV heads, page size 16, head_dim 128, bf16; 1e12 bytes/s, so latency_us * 1e6 bytes."""
    cost = SelectionCost(hbm_bytes_per_second=1e12, selection_latency_us=latency_us)
    return SelectionGate(mode, num_kv_heads=2, page_size=16, head_dim=128, kv_dtype=torch.bfloat16, cost=cost)


def test_the_gate_decides_per_policy_group():
    seqs = [
        sequence("quest", 3),  # within budget: never selects
        sequence("quest", 100),
        sequence("infllm", 10),
        sequence("infllm", 12),
        sequence("full", 100),
        sequence("sink", 4),
        sequence("h2o", 4),
    ]
    # Latency 1,000,000 bytes. quest: saved 2 * 96 * 8192 = 1,572,864 > 1,000,000 + 2 * 100 * 512
    # = 1,102,400: selects. infllm: saved 2 * (6 + 8) * 8192 = 229,376 < 1,000,000 + ...: dense.
    when_faster = gate("when_faster", 1.0)
    assert when_faster.selecting(seqs) == [False, True, False, False, False, False, False]
    assert when_faster.skipped_rows == {"infllm": 2}
    assert when_faster.skipped_groups == {"infllm": 1}
    assert when_faster.selecting(seqs[2:4]) == [False, False]
    assert when_faster.skipped_rows == {"infllm": 4}
    assert when_faster.skipped_groups == {"infllm": 2}
    # exact: every request over its budget selects, whatever it costs.
    exact = gate("exact", 1.0)
    assert exact.selecting(seqs) == [False, True, True, True, False, False, False]
    assert exact.skipped_rows == {} and exact.skipped_groups == {}


def test_a_batch_mate_can_make_the_group_pay():
    """Outputs under when_faster depend on batch mates of the same policy: alone, the quest
    request at 20 pages does not pay (saved 2 * 16 * 8192 = 262,144 < 1,000,000 + 20,480); beside
    one at 100 pages the group does (1,835,008 > 1,000,000 + 122,880) and both select."""
    alone = gate("when_faster", 1.0)
    assert alone.selecting([sequence("quest", 20)]) == [False]
    assert gate("when_faster", 1.0).selecting([sequence("quest", 20), sequence("quest", 100)]) == [True, True]


def test_selection_mode_is_validated():
    with pytest.raises(ValueError, match=r"^selection: must be one of exact, when_faster, got 'fast'"):
        EngineConfig(selection="fast")
    assert EngineConfig().selection == "exact"
    assert EngineConfig(selection="when_faster").selection == "when_faster"
    with pytest.raises(ValueError, match=r"^selection: "):
        gate("always", 1.0)


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"hbm_bytes_per_second": 0.0}, "hbm_bytes_per_second"),
        ({"hbm_bytes_per_second": float("nan")}, "hbm_bytes_per_second"),
        ({"selection_latency_us": -1.0}, "selection_latency_us"),
        ({"selection_latency_us": float("nan")}, "selection_latency_us"),
    ],
)
def test_cost_constants_are_validated(kwargs, field_name):
    with pytest.raises(ValueError, match=f"^{field_name}: "):
        SelectionCost(**kwargs)
