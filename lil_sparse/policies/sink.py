"""sink (StreamingLLM): keep the attention-sink pages and the most recent pages; evict the rest.

Adapted to pages: the first ``sink_tokens`` round up to whole sink pages, and the recent window
is every other page the budget allows. Tokens keep their original RoPE positions (StreamingLLM
re-numbers positions inside its cache; with post-RoPE keys in a paged cache we keep them, as
post-training sparse-attention studies do). Evicted pages go back to the pool.
"""

from __future__ import annotations

import torch

from lil_sparse.kv.kv_cache import KVCache
from lil_sparse.policies.base import PolicyBatch, SelectionPolicy


class SinkPolicy(SelectionPolicy):
    name = "sink"
    reads_sink_tokens = True
    evicts = True

    def keep_scores(self, batch: PolicyBatch, kv: KVCache) -> torch.Tensor:
        slots = batch.slot_index().expand(batch.table.shape[0], -1).float()
        # Newer pages score higher; sink pages always survive.
        return slots.masked_fill(slots < batch.sink_pages.unsqueeze(1), float("inf"))
