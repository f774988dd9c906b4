"""infllm: keep all KV; attend the initial pages, a local window and the top-scoring blocks.

Adapted to pages: a block is one page, and its representative key is the mean of its keys
(InfLLM picks a few representative tokens per block by the attention they received; the mean
is the one-vector version that needs no extra attention pass). A block's score is the dot
product of the current queries with its representative key, summed over every query head of
every KV head, so a sequence attends the same pages in every head, as in InfLLM. Blocks are
re-chosen in every layer.
"""

from __future__ import annotations

import torch

from lil_sparse.kernels import fused_selection_enabled
from lil_sparse.kv.kv_cache import KVCache
from lil_sparse.policies.base import PolicyBatch, SelectionPolicy


def infllm_row_scores(q: torch.Tensor, representative: torch.Tensor) -> torch.Tensor:
    """Per-row block scores, the plain PyTorch reference.

    ``q: [n, G, D]``; ``representative: [n, W, D]`` (each page's mean key). Returns ``[n, W]``
    float32: the dot product with every query of the row, summed over the group.
    """
    return torch.bmm(q.float(), representative.float().transpose(1, 2)).sum(dim=1)


def infllm_sequence_scores_reference(
    q: torch.Tensor, key_sum: torch.Tensor, batch: PolicyBatch, page_size: int
) -> torch.Tensor:
    """``[seqs, W] float32`` block scores per sequence, ready for top-k (the PyTorch reference of
    :func:`lil_sparse.kernels.page_scores.infllm_sequence_scores`): the row scores summed over the
    sequence's KV heads, ``+inf`` for the sink and recent slots, ``-inf`` from ``held - 1`` on."""
    representative = key_sum[batch.table.long()] / page_size  # older pages are full
    per_row = infllm_row_scores(q, representative)  # [n, W]
    heads = batch.num_kv_heads
    scores = per_row.view(-1, heads, per_row.shape[1]).sum(dim=1)  # [seqs, W]
    slots = batch.slot_index()
    first = slice(None, None, heads)  # a sequence's rows share held and window sizes
    held, sink, recent = batch.held[first], batch.sink_pages[first], batch.recent_pages[first]
    forced = (slots < sink.unsqueeze(1)) | (slots >= (held - recent).unsqueeze(1))
    scores = scores.masked_fill(forced, float("inf"))
    return scores.masked_fill(slots >= (held - 1).unsqueeze(1), float("-inf"))


class InfLLMPolicy(SelectionPolicy):
    name = "infllm"
    selects_per_layer = True
    reads_key_metadata = True

    def selection_scores(
        self, layer: int, q: torch.Tensor, batch: PolicyBatch, kv: KVCache
    ) -> tuple[torch.Tensor, int]:
        """One score row per sequence, shared by its ``num_kv_heads`` rows (InfLLM picks the same
        blocks in every head)."""
        key_sum = kv.key_sum[layer]  # [P, D] float32
        if fused_selection_enabled(key_sum, kv.head_dim):
            from lil_sparse.kernels.page_scores import infllm_sequence_scores

            scores = infllm_sequence_scores(
                q,
                key_sum,
                batch.table,
                batch.held,
                batch.sink_pages,
                batch.recent_pages,
                batch.num_kv_heads,
                kv.page_size,
            )
        else:
            scores = infllm_sequence_scores_reference(q, key_sum, batch, kv.page_size)
        return scores, batch.num_kv_heads
