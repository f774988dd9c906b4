"""infllm: keep all KV; attend the initial pages, a local window and the top-scoring blocks.

Adapted to pages: a block is one page, and its representative key is the mean of its keys
(InfLLM picks a few representative tokens per block by the attention they received; the mean
is the one-vector version that needs no extra attention pass), summed exactly in fp32 and
rounded to the cache dtype, as InfLLM keeps its representative keys in the model's dtype. A
block's score is the dot product of the current queries with its representative key, summed
over every query head of every KV head, so a sequence attends the same pages in every head, as
in InfLLM. Blocks are re-chosen in every layer.
"""

from __future__ import annotations

import torch

from lil_sparse.kernels import fused_selection_enabled
from lil_sparse.kv.kv_cache import KVCache
from lil_sparse.policies.base import PageScores, PolicyBatch, SelectionPolicy, mask_beyond


def infllm_row_scores(q: torch.Tensor, representative: torch.Tensor) -> torch.Tensor:
    """Per-row block scores, the plain PyTorch reference.

    ``q: [n, G, D]``; ``representative: [n, W, D]`` (each page's mean key). Returns ``[n, W]``
    float32: the dot product with every query of the row, summed over the group.
    """
    return torch.bmm(q.float(), representative.float().transpose(1, 2)).sum(dim=1)


class InfLLMPolicy(SelectionPolicy):
    name = "infllm"
    reads_sink_tokens = True
    reads_recent_tokens = True
    selects_per_layer = True
    reads_key_metadata = True
    metadata_vectors = 1  # key mean per page, in the cache dtype

    def selection_scores(self, layer: int, q: torch.Tensor, batch: PolicyBatch, kv: KVCache) -> PageScores:
        """Row scores summed over a sequence's KV heads (InfLLM picks the same blocks in every
        head), with the initial and local windows always kept."""
        key_mean = kv.key_mean[layer]  # [P, D], cache dtype
        if fused_selection_enabled(key_mean, kv.head_dim):
            from lil_sparse.kernels.page_scores import infllm_scores

            per_row = infllm_scores(q, key_mean, batch.table, batch.held)
        else:
            representative = key_mean[batch.table.long()]  # older pages are full: their means
            limit = batch.held - 1  # the newest page is added by the caller
            per_row = mask_beyond(infllm_row_scores(q, representative), limit, batch)  # [n, W]
        return PageScores(per_row, share=batch.num_kv_heads, keep_windows=True)
