"""h2o (Heavy-Hitter Oracle): keep the recent pages plus the pages with the most attention mass.

Adapted to pages and to a paged, per-head cache:

- Mass is accumulated per page and KV head (the group's query heads summed) and summed over
  layers, so one eviction decision per (sequence, KV head) frees the page in every layer. H2O
  scores tokens per layer and head; a page is the unit we can free, and sharing the decision
  across layers is what lets eviction return memory.
- Prefill seeds the mass from the last ``OBSERVATION_WINDOW`` prompt queries rather than all of
  them, which would cost O(prompt^2) extra work at long contexts. With chunked prefill each
  chunk adds the mass of the window queries it holds.
- Each decode step adds the probability every attended page received. On CUDA the attention
  kernel's log-sum-exp turns one Triton pass over the attended keys into that mass
  (:mod:`lil_sparse.kernels.page_mass`), for every layer of the step at once after its last
  layer (:meth:`H2OPolicy.observe_decode_layers`); elsewhere a plain fp32 softmax recomputes it
  layer by layer.
- The recent window (the newest page included) always survives; heavy hitters fill the rest.
"""

from __future__ import annotations

import math

import torch

from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.attention.reference import paged_page_probs
from lil_sparse.kernels import fused_selection_enabled
from lil_sparse.kv.kv_cache import KVCache
from lil_sparse.policies.base import PolicyBatch, SelectionPolicy

OBSERVATION_WINDOW = 64


class H2OPolicy(SelectionPolicy):
    name = "h2o"
    reads_recent_tokens = True
    evicts = True
    observes_attention = True

    def keep_scores(self, batch: PolicyBatch, kv: KVCache) -> torch.Tensor:
        mass = kv.attention_mass[batch.table.long()]  # [n, width]
        recent_start = (batch.held - batch.recent_pages).unsqueeze(1)
        return mass.masked_fill(batch.slot_index() >= recent_start, float("inf"))

    def observe_decode(
        self,
        layer: int,
        q: torch.Tensor,
        page_ids: torch.Tensor,
        batch: PolicyBatch,
        kv: KVCache,
        lse: torch.Tensor | None = None,
    ) -> None:
        layout = _observed_layout(batch)
        if lse is not None and _mass_kernel_serves(q, kv):
            # One pass over the attended keys with the attention kernel's log-sum-exp.
            from lil_sparse.kernels.page_mass import add_page_mass

            add_page_mass(
                q, kv.k[layer], page_ids, layout.counts, layout.last_page_len, lse, kv.attention_mass
            )
            return
        # Over the full (bucketed) width, padding included at probability 0: static shapes, so
        # the step can run inside a CUDA graph.
        width = page_ids.shape[1]
        probs = paged_page_probs(q, kv.k[layer], page_ids, layout, width)  # [n, width]
        kv.attention_mass.index_add_(0, page_ids.reshape(-1).long(), probs.reshape(-1))

    def observe_decode_layers(
        self,
        q_layers: torch.Tensor,
        page_ids: torch.Tensor,
        batch: PolicyBatch,
        kv: KVCache,
        lse_layers: torch.Tensor,
    ) -> None:
        layout = _observed_layout(batch)
        if not _mass_kernel_serves(q_layers, kv):
            super().observe_decode_layers(q_layers, page_ids, batch, kv, lse_layers)
            return
        # Every layer in two launches rather than one per layer (kernels/page_mass.py).
        from lil_sparse.kernels.page_mass import add_page_mass_layers

        add_page_mass_layers(
            q_layers, kv.k, page_ids, layout.counts, layout.last_page_len, lse_layers, kv.attention_mass
        )

    def observe_prefill(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        pages: torch.Tensor,
        kv: KVCache,
        prompt_tokens: int,
    ) -> None:
        length, num_kv_heads, head_dim = k.shape
        num_heads = q.shape[1]
        # The window is the prompt's last queries; a chunk observes those it holds, each against
        # every key up to itself, so chunked and single-pass prefill record the same mass.
        window_start = max(length - q.shape[0], prompt_tokens - OBSERVATION_WINDOW)
        if window_start >= length:
            return
        window = length - window_start
        group = num_heads // num_kv_heads
        queries = q[q.shape[0] - window :].float().view(window, num_kv_heads, group, head_dim)
        scores = torch.einsum("wkgd,tkd->kgwt", queries, k.float()) / math.sqrt(head_dim)
        query_pos = torch.arange(window_start, length, device=q.device).view(-1, 1)
        causal = torch.arange(length, device=q.device).view(1, -1) <= query_pos  # [window, T]
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        token_mass = probs.sum(dim=(1, 2))  # [Hkv, T]
        kv.attention_mass.index_add_(0, pages.reshape(-1), token_mass.reshape(-1))


def _observed_layout(batch: PolicyBatch) -> DecodeLayout:
    """The group's own decode layout, which the mass pass reads (ValueError without one)."""
    if batch.layout is None:
        raise ValueError("h2o needs the group's decode layout to observe attention")
    return batch.layout


def _mass_kernel_serves(q: torch.Tensor, kv: KVCache) -> bool:
    """Whether the Triton page-mass kernels run (CUDA, a power-of-two head_dim, q in the cache's
    dtype); else a plain fp32 softmax recomputes the probabilities."""
    return fused_selection_enabled(q, kv.head_dim) and q.dtype == kv.k.dtype
