"""quest: keep all KV; per layer and KV head, attend the pages whose keys could score highest.

For each page Quest keeps the element-wise min and max of its keys. The upper bound of a query's
score against any key in the page is ``sum_d max(q_d * min_d, q_d * max_d)``, which equals
``max(q, 0) . max + min(q, 0) . min``, so it costs one small matmul over the page's stored
``[min | max]`` instead of an elementwise pass per query head. The bounds are kept in the cache
dtype (bf16 on the GPU, like Quest's fp16 metadata); rounding can move a bound by one ulp.
Scores are summed over the group's query heads (one page list per KV head), and the top pages
within the budget are attended together with the newest page. The first ``dense_layers``
layers attend densely, as in the Quest paper.
"""

from __future__ import annotations

import torch

from lil_sparse.kv.kv_cache import KVCache
from lil_sparse.policies.base import PolicyBatch, SelectionPolicy, mask_beyond, top_slots


def quest_page_scores(q: torch.Tensor, key_bounds: torch.Tensor) -> torch.Tensor:
    """Upper-bound scores, summed over the group's query heads.

    ``q: [n, G, D]``; ``key_bounds: [n, W, 2, D]`` (per page: key min, key max).
    Returns ``[n, W]`` float32. With ``q = min(q, 0) + max(q, 0)`` the bound
    ``min(q, 0) . min + max(q, 0) . max`` is one matmul of ``[n, G, 2D]`` by ``[n, 2D, W]``.
    """
    n, width, _, head_dim = key_bounds.shape
    split = torch.cat((q.clamp(max=0), q.clamp(min=0)), dim=-1).to(key_bounds.dtype)  # [n, G, 2D]
    bound = torch.bmm(split, key_bounds.reshape(n, width, 2 * head_dim).transpose(1, 2))
    return bound.float().sum(dim=1)


class QuestPolicy(SelectionPolicy):
    name = "quest"
    selects_per_layer = True
    reads_key_metadata = True

    def select_slots(self, layer: int, q: torch.Tensor, batch: PolicyBatch, kv: KVCache) -> torch.Tensor:
        scores = quest_page_scores(q, kv.key_bounds[layer][batch.table.long()])
        scores = mask_beyond(scores, batch.held - 1, batch)  # the newest page is added by the caller
        return top_slots(scores, batch.max_select - 1)
