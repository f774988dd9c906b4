"""Plain PyTorch attention: the reference every fast backend is tested against. Runs anywhere."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from lil_sparse.attention.backend import AttentionBackend
from lil_sparse.attention.layout import DecodeLayout


def paged_scores(
    q: torch.Tensor, k_pages: torch.Tensor, page_ids: torch.Tensor, layout: DecodeLayout, width: int = 0
) -> torch.Tensor:
    """Scaled scores of each row's queries against its selected pages, fp32.

    ``q: [rows, G, D]``, ``k_pages: [P, 1, S, D]``, ``page_ids: [rows, >= width] int32``;
    ``width`` defaults to the layout's widest row. Returns ``[rows, G, width * S]`` with
    ``-inf`` where a padded slot holds no token.
    """
    width = width or layout.width
    rows, _, head_dim = q.shape
    page_size = k_pages.shape[2]
    ids = page_ids[:, :width].long()
    keys = k_pages[ids].reshape(rows, width * page_size, head_dim).float()
    scores = torch.einsum("rgd,rtd->rgt", q.float(), keys) / math.sqrt(head_dim)
    return scores.masked_fill(~layout.token_mask(page_size, width).unsqueeze(1), float("-inf"))


def paged_page_probs(
    q: torch.Tensor, k_pages: torch.Tensor, page_ids: torch.Tensor, layout: DecodeLayout, width: int = 0
) -> torch.Tensor:
    """Attention probability each selected page receives, summed over the row's G query heads.

    Returns ``[rows, width] float32`` (zero on padding). H2O accumulates this.
    """
    width = width or layout.width
    probs = torch.softmax(paged_scores(q, k_pages, page_ids, layout, width), dim=-1)
    page_size = k_pages.shape[2]
    return probs.sum(dim=1).view(layout.rows, width, page_size).sum(dim=2)


class ReferenceBackend(AttentionBackend):
    name = "reference"

    def prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: list[int]
    ) -> torch.Tensor:
        group = q.shape[1] // k.shape[1]
        out = torch.empty_like(q)
        # A loop over prefilled sequences, not decode rows: prefill is not the per-token hot path.
        for start, end in itertools.pairwise(cu_seqlens):
            qs = q[start:end].transpose(0, 1)  # [Hq, T, D]
            ks = k[start:end].transpose(0, 1).repeat_interleave(group, dim=0)
            vs = v[start:end].transpose(0, 1).repeat_interleave(group, dim=0)
            out[start:end] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True).transpose(0, 1)
        return out

    def decode(
        self,
        layer: int,
        q: torch.Tensor,
        k_pages: torch.Tensor,
        v_pages: torch.Tensor,
        page_ids: torch.Tensor,
        layout: DecodeLayout,
    ) -> torch.Tensor:
        return self._attend(q, v_pages, page_ids, layout, paged_scores(q, k_pages, page_ids, layout))

    def decode_with_lse(
        self,
        layer: int,
        q: torch.Tensor,
        k_pages: torch.Tensor,
        v_pages: torch.Tensor,
        page_ids: torch.Tensor,
        layout: DecodeLayout,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode` and ``lse: [rows, G] float32``, the base-2 log-sum-exp of the scaled
        scores (FlashInfer's ``return_lse`` convention), from the same fp32 scores."""
        scores = paged_scores(q, k_pages, page_ids, layout)
        out = self._attend(q, v_pages, page_ids, layout, scores)
        return out, torch.logsumexp(scores, dim=-1) * (1 / math.log(2))

    @staticmethod
    def _attend(
        q: torch.Tensor,
        v_pages: torch.Tensor,
        page_ids: torch.Tensor,
        layout: DecodeLayout,
        scores: torch.Tensor,
    ) -> torch.Tensor:
        """fp32 softmax of ``scores: [rows, G, width * S]`` times the rows' values, in q's dtype."""
        rows, _, head_dim = q.shape
        page_size = v_pages.shape[2]
        ids = page_ids[:, : layout.width].long()
        values = v_pages[ids].reshape(rows, layout.width * page_size, head_dim).float()
        return torch.einsum("rgt,rtd->rgd", torch.softmax(scores, dim=-1), values).to(q.dtype)
