"""A decode step's attention observers see every layer once, after the last layer.

:class:`~lil_sparse.engine.step_attention.DecodeAttention` keeps each layer's queries and the
attention's log-sum-exp and hands them to the observing policy (H2O) in one
:meth:`~lil_sparse.policies.base.SelectionPolicy.observe_decode_layers` call after the last
layer. Here, on CPU with the reference backend (which gives the lse), over three layers and an
H2O group that is a subset of the step's rows: the mass stays untouched until the last layer,
then equals the reference probabilities of every layer added page by page.
"""

from __future__ import annotations

import pytest
import torch

from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.attention.reference import ReferenceBackend, paged_page_probs
from lil_sparse.engine.step_attention import DecodeAttention, PolicyGroup
from lil_sparse.kv import KVCache
from lil_sparse.policies import POLICIES, PolicyBatch

LAYERS, PAGE_SIZE, HEAD_DIM, HEADS, GROUP = 3, 4, 8, 2, 3


def h2o_step(
    gen: torch.Generator,
) -> tuple[KVCache, DecodeAttention, torch.Tensor, torch.Tensor, DecodeLayout]:
    """A random cache and a decode step of two sequences x two KV heads = 4 rows, H2O holding
    rows 2 and 3 (the second sequence): the cache, the step's attention, its base page ids, the
    H2O rows and their layout."""
    kv = KVCache(LAYERS, 16, PAGE_SIZE, HEAD_DIM, torch.float32, torch.device("cpu"))
    kv.k.copy_(torch.randn(kv.k.shape, generator=gen))
    kv.v.copy_(torch.randn(kv.v.shape, generator=gen))
    base = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 0], [8, 9, 0]], dtype=torch.int32)
    counts = [3, 3, 2, 2]
    last = torch.tensor([4, 4, 2, 2], dtype=torch.int32)
    layout = DecodeLayout.build(counts, last)
    h2o_rows = torch.tensor([2, 3])
    h2o_layout = DecodeLayout.build([2, 2], last[2:])
    batch = PolicyBatch(
        rows=h2o_rows,
        table=base[2:, :2],
        held=torch.tensor([2, 2]),
        select_count=torch.tensor([2, 2]),
        sink_pages=torch.tensor([1, 1]),
        recent_pages=torch.tensor([1, 1]),
        dense_layers=torch.tensor([0, 0]),
        max_select=2,
        num_kv_heads=HEADS,
        layout=h2o_layout,
    )
    group = PolicyGroup(POLICIES["h2o"], batch, min_dense_layers=0, max_dense_layers=0)
    write_slots = torch.tensor(
        [[2 * PAGE_SIZE + 3, 5 * PAGE_SIZE + 3], [7 * PAGE_SIZE + 1, 9 * PAGE_SIZE + 1]]
    )
    attention = DecodeAttention(
        kv, ReferenceBackend(), write_slots, base, [layout] * LAYERS, [group], num_kv_heads=HEADS
    )
    return kv, attention, base, h2o_rows, h2o_layout


def layer_inputs(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's ``q: [2, Hq, D]``, ``k, v: [2, Hkv, D]``."""
    q = torch.randn(2, HEADS * GROUP, HEAD_DIM, generator=gen)
    k = torch.randn(2, HEADS, HEAD_DIM, generator=gen)
    return q, k, torch.randn(k.shape, generator=gen)


def test_observers_see_every_layer_after_the_last():
    gen = torch.Generator().manual_seed(3)
    kv, attention, base, h2o_rows, h2o_layout = h2o_step(gen)
    assert attention.defer_observation

    want = torch.zeros_like(kv.attention_mass)
    for layer in range(LAYERS):
        q, k, v = layer_inputs(gen)
        attention(layer, q, k, v)
        if layer < LAYERS - 1:
            assert not kv.attention_mass.any()  # deferred to the step's end
        rows = q.view(2 * HEADS, GROUP, HEAD_DIM)[h2o_rows]
        probs = paged_page_probs(rows, kv.k[layer], base[h2o_rows], h2o_layout, base.shape[1])
        want.index_add_(0, base[h2o_rows].reshape(-1).long(), probs.reshape(-1))
    torch.testing.assert_close(kv.attention_mass, want)
    # Each H2O row's probability sums to GROUP per layer; no other row's pages get any.
    assert kv.attention_mass[[6, 7, 8, 9]].sum().item() == pytest.approx(2 * GROUP * LAYERS, rel=1e-5)
    assert not kv.attention_mass[[0, 1, 2, 3, 4, 5]].any()


@pytest.mark.parametrize("layers", [(0, 2), (0, 0), (1,)], ids=["skipped", "repeated", "not first"])
def test_layers_out_of_order_are_refused(layers):
    """Observed once per step, a skipped layer would lose its mass and a repeated one count twice
    (or, past the last layer, never be observed): the step refuses the call instead."""
    gen = torch.Generator().manual_seed(4)
    kv, attention, *_ = h2o_step(gen)
    for layer in layers[:-1]:
        attention(layer, *layer_inputs(gen))
    with pytest.raises(RuntimeError, match=f"layer {layers[-1]} after {len(layers) - 1} layers"):
        attention(layers[-1], *layer_inputs(gen))
    assert not kv.attention_mass.any()
