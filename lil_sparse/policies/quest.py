"""quest: keep all KV; per layer and KV head, attend the pages whose keys could score highest.

For each page Quest keeps the element-wise min and max of its keys. The upper bound of a query's
score against any key in the page is ``sum_d max(q_d * min_d, q_d * max_d)``, which equals
``max(q, 0) . max + min(q, 0) . min``, so it costs one small matmul over the page's stored
``[min | max]`` instead of an elementwise pass per query head; summed over the group's query
heads it is two D-vectors per row. The bounds are kept in the cache dtype (bf16 on the GPU, like
Quest's fp16 metadata; rounding can move a bound by one ulp) and scored in fp32.
Scores are summed over the group's query heads (one page list per KV head), and the top pages
within the budget are attended together with the newest page. The first ``dense_layers``
layers attend densely, as in the Quest paper.
"""

from __future__ import annotations

import torch

from lil_sparse.kernels import fused_selection_enabled
from lil_sparse.kv.kv_cache import KVCache
from lil_sparse.policies.base import PageScores, PolicyBatch, SelectionPolicy, mask_beyond


def quest_page_scores(q: torch.Tensor, key_bounds: torch.Tensor) -> torch.Tensor:
    """Upper-bound scores, summed over the group's query heads (the plain PyTorch reference).

    ``q: [n, G, D]``; ``key_bounds: [n, W, 2, D]`` (per page: key min, key max).
    Returns ``[n, W]`` float32. Since ``min <= max``, ``max(q * min, q * max)`` is
    ``min(q, 0) * min + max(q, 0) * max``, so the sum over the group is two D-vectors per row
    dotted with each page's bounds, in fp32.
    """
    q32 = q.float()
    split = torch.stack((q32.clamp(max=0).sum(dim=1), q32.clamp(min=0).sum(dim=1)), dim=1)  # [n, 2, D]
    return torch.einsum("nwhd,nhd->nw", key_bounds.float(), split)


def quest_scores(layer: int, q: torch.Tensor, batch: PolicyBatch, kv: KVCache) -> torch.Tensor:
    """``[n, W] float32`` bounds of every older page (``-inf`` from slot ``held - 1`` on).

    On CUDA one Triton kernel per layer reads the bounds by page id
    (:func:`lil_sparse.kernels.page_scores.quest_scores`); elsewhere the reference gathers them.
    """
    bounds = kv.key_bounds[layer]  # [P, 2, D]
    if fused_selection_enabled(bounds, kv.head_dim):
        from lil_sparse.kernels.page_scores import quest_scores as fused

        return fused(q, bounds, batch.table, batch.held)  # -inf from the newest page on
    scores = quest_page_scores(q, bounds[batch.table.long()])
    return mask_beyond(scores, batch.held - 1, batch)  # the newest page is added by the caller


class QuestPolicy(SelectionPolicy):
    name = "quest"
    has_dense_layers = True
    selects_per_layer = True
    reads_key_metadata = True
    metadata_vectors = 2  # key min and max per page, in the cache dtype

    def selection_scores(self, layer: int, q: torch.Tensor, batch: PolicyBatch, kv: KVCache) -> PageScores:
        """One score row per (sequence, KV head) row: each KV head picks its own pages."""
        return PageScores(quest_scores(layer, q, batch, kv))
