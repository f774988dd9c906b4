"""quest: keep all KV; per layer and KV head, attend the pages whose keys could score highest.

For each page Quest keeps the element-wise min and max of its keys. The upper bound of a query's
score against any key in the page is ``sum_d max(q_d * min_d, q_d * max_d)``, which equals
``relu(q) . max + min(q, 0) . min``, so it costs two small matmuls instead of a
``[pages, D]`` elementwise pass per query head. Scores are summed over the group's query heads
(one page list per KV head), and the top pages within the budget are attended together with the
newest page. The first ``dense_layers`` layers attend densely, as in the Quest paper.
"""

from __future__ import annotations

import torch

from lil_sparse.kv.kv_cache import KVCache
from lil_sparse.policies.base import PolicyBatch, SelectionPolicy, mask_beyond, top_slots


def quest_page_scores(q: torch.Tensor, key_min: torch.Tensor, key_max: torch.Tensor) -> torch.Tensor:
    """Upper-bound scores. ``q: [n, G, D]``, ``key_min, key_max: [n, W, D]`` -> ``[n, W]`` fp32."""
    qf = q.float()
    positive = qf.clamp(min=0)
    negative = qf.clamp(max=0)
    bound = torch.bmm(positive, key_max.transpose(1, 2)) + torch.bmm(negative, key_min.transpose(1, 2))
    return bound.sum(dim=1)


class QuestPolicy(SelectionPolicy):
    name = "quest"
    selects_per_layer = True
    reads_key_metadata = True

    def select_slots(self, layer: int, q: torch.Tensor, batch: PolicyBatch, kv: KVCache) -> torch.Tensor:
        pages = batch.table.long()
        scores = quest_page_scores(q, kv.key_min[layer][pages], kv.key_max[layer][pages])
        scores = mask_beyond(scores, batch.held - 1, batch)  # the newest page is added by the caller
        return top_slots(scores, batch.max_select - 1)
