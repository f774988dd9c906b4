"""Each policy's page choice against a brute-force reference written here, over a grid."""

from __future__ import annotations

import itertools

import pytest
import torch

from lil_sparse.engine.page_manager import compact_rows
from lil_sparse.kv import KVCache
from lil_sparse.policies import POLICIES, PolicyBatch

GRID = list(itertools.product([4, 8, 16], [3, 9, 40], [2, 4, 7]))  # page_size, held pages, budget pages


def make_rows(page_size: int, held: int, heads: int = 2, group: int = 3, head_dim: int = 8, seed: int = 0):
    """A KV cache holding one sequence of ``held`` pages per head, with random keys and queries."""
    gen = torch.Generator().manual_seed(seed)
    num_pages = held * heads + 3
    kv = KVCache(1, num_pages, page_size, head_dim, torch.float32, torch.device("cpu"))
    pages = torch.randperm(num_pages, generator=gen)[: held * heads].view(heads, held)
    length = (held - 1) * page_size + 1 + int(torch.randint(page_size, (1,), generator=gen))
    token = torch.arange(length)
    slots = (pages[:, token // page_size] * page_size + token % page_size).t()  # [T, heads]
    keys = torch.randn(length, heads, head_dim, generator=gen)
    kv.write(0, slots, keys, torch.randn_like(keys))
    q = torch.randn(heads, group, head_dim, generator=gen)
    return kv, pages.to(torch.int32), keys, q, length


def batch_for(pages, held, budget, sink=1, recent=2, dense=0):
    rows = pages.shape[0]
    full = lambda v: torch.full((rows,), v, dtype=torch.long)  # noqa: E731
    return PolicyBatch(
        rows=torch.arange(rows),
        table=pages,
        held=full(held),
        select_count=full(min(held, budget)),
        sink_pages=full(sink),
        recent_pages=full(recent),
        dense_layers=full(dense),
        max_select=min(held, budget),
        num_kv_heads=rows,
    )


@pytest.mark.parametrize(("page_size", "held", "budget"), GRID)
def test_quest_picks_pages_with_highest_upper_bound(page_size, held, budget):
    kv, pages, keys, q, _length = make_rows(page_size, held)
    batch = batch_for(pages, held, budget)
    chosen = POLICIES["quest"].select_slots(0, q, batch, kv)[:, : min(held, budget) - 1]
    for head in range(pages.shape[0]):
        bounds = []
        for page in range(held - 1):
            page_keys = keys[page * page_size : (page + 1) * page_size, head]
            lo, hi = page_keys.min(0).values, page_keys.max(0).values
            bound = sum(float(torch.maximum(qg * lo, qg * hi).sum()) for qg in q[head])
            bounds.append((bound, page))
        expected = {p for _, p in sorted(bounds, reverse=True)[: min(held, budget) - 1]}
        assert set(chosen[head].tolist()) == expected


@pytest.mark.parametrize(("page_size", "held", "budget"), GRID)
def test_infllm_picks_sink_local_and_best_blocks_shared_by_heads(page_size, held, budget):
    sink, recent = 1, min(2, budget - 1)
    if sink + recent > budget:
        pytest.skip("window larger than budget")
    kv, pages, keys, q, _length = make_rows(page_size, held)
    batch = batch_for(pages, held, budget, sink=sink, recent=recent)
    count = min(held, budget) - 1
    chosen = POLICIES["infllm"].select_slots(0, q, batch, kv)[:, :count]
    forced = {p for p in range(held - 1) if p < sink or p >= held - recent}
    scored = []
    for page in range(held - 1):
        if page in forced:
            continue
        score = 0.0
        for head in range(pages.shape[0]):
            mean = keys[page * page_size : (page + 1) * page_size, head].mean(0)
            score += float((q[head] @ mean).sum())
        scored.append((score, page))
    expected = forced | {p for _, p in sorted(scored, reverse=True)[: max(0, count - len(forced))]}
    if count < len(forced):
        pytest.skip("budget below the forced window")
    for head in range(pages.shape[0]):
        assert set(chosen[head].tolist()) == expected


@pytest.mark.parametrize(("page_size", "held", "budget"), GRID)
def test_sink_keeps_first_pages_and_most_recent(page_size, held, budget):
    kv, pages, _, _, _ = make_rows(page_size, held)
    sink = 1
    batch = batch_for(pages, held, budget, sink=sink)
    scores = POLICIES["sink"].keep_scores(batch, kv)
    keep = min(held, budget)
    compacted, evicted = compact_rows(pages, scores, torch.full((2,), keep), batch.held)
    for head in range(2):
        expected = list(range(min(sink, keep))) + list(range(held - (keep - min(sink, keep)), held))
        assert compacted[head, :keep].tolist() == pages[head, expected].tolist()
        assert int(evicted[head].sum()) == held - keep


@pytest.mark.parametrize(("page_size", "held", "budget"), GRID)
def test_h2o_keeps_recent_and_heaviest_pages(page_size, held, budget):
    kv, pages, _, _, _ = make_rows(page_size, held)
    gen = torch.Generator().manual_seed(1)
    kv.attention_mass.copy_(torch.rand(kv.num_pages, generator=gen))
    recent = min(2, budget)
    batch = batch_for(pages, held, budget, recent=recent)
    keep = min(held, budget)
    scores = POLICIES["h2o"].keep_scores(batch, kv)
    compacted, _ = compact_rows(pages, scores, torch.full((2,), keep), batch.held)
    for head in range(2):
        recent_slots = set(range(held - recent, held))
        mass = [(float(kv.attention_mass[pages[head, s]]), s) for s in range(held) if s not in recent_slots]
        heavy = {s for _, s in sorted(mass, reverse=True)[: keep - len(recent_slots)]}
        expected = sorted(recent_slots | heavy)
        assert compacted[head, :keep].tolist() == pages[head, expected].tolist()


def test_quest_bound_is_an_upper_bound_on_every_key():
    kv, pages, keys, q, _length = make_rows(8, 6)
    batch = batch_for(pages, 6, 6)
    from lil_sparse.policies.quest import quest_page_scores

    for head in range(2):
        table = pages[head : head + 1].long()
        bound = quest_page_scores(q[head : head + 1], kv.key_bounds[0][table])[0]
        for page in range(5):
            page_keys = keys[page * 8 : (page + 1) * 8, head]
            exact = (q[head] @ page_keys.t()).sum(0).max()  # best single key, heads summed
            assert float(bound[page]) >= float(exact) - 1e-5
    assert batch.max_select == 6
