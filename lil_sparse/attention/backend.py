"""The attention backend interface: dense prefill and block-sparse paged decode.

A backend only computes attention. The KV cache, page selection and metadata live elsewhere, so
a new backend (FlashInfer) slots in without touching the policies or the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from lil_sparse.attention.layout import DecodeLayout

if TYPE_CHECKING:
    from lil_sparse.attention.flashinfer_chunk_prefill import PagedChunkPrefill


class AttentionBackend(ABC):
    name: str = "abstract"
    # Whether the runner should order a decode step's rows longest first (a backend that runs
    # very unequal rows as separate calls over contiguous rows wants them; the order costs a
    # sort and two small gathers per step, so backends that do not split leave it off).
    prefers_longest_first: bool = False

    def begin_decode_step(self, layouts: Sequence[DecodeLayout]) -> None:
        """Called once per decode step with every layout the step's layers will use (``plan()``)."""

    def chunk_prefill(self) -> PagedChunkPrefill | None:
        """The kernel for prompt chunks that continue a prompt (they attend their request's pages),
        or ``None``: then they run :func:`~lil_sparse.attention.chunked_prefill.chunk_attention`
        on the gathered KV (the reference, any device)."""
        return None

    @abstractmethod
    def prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: list[int]
    ) -> torch.Tensor:
        """Dense causal attention over freshly prefilled sequences packed back to back.

        ``q: [T, Hq, D]``, ``k, v: [T, Hkv, D]``; ``cu_seqlens`` (host ints, length N + 1) are the
        sequence boundaries. Returns ``[T, Hq, D]`` in ``q``'s dtype.
        """

    @abstractmethod
    def decode(
        self,
        layer: int,
        q: torch.Tensor,
        k_pages: torch.Tensor,
        v_pages: torch.Tensor,
        page_ids: torch.Tensor,
        layout: DecodeLayout,
    ) -> torch.Tensor:
        """Attention of one query token per row over that row's selected pages.

        ``q: [rows, G, D]`` (the G query heads of the row's KV head); ``k_pages, v_pages:
        [num_pages, 1, page_size, D]``; ``page_ids: [rows, >= layout.width] int32`` with the
        newest page last in each row. Returns ``[rows, G, D]`` in ``q``'s dtype.
        """

    def selection_target(
        self, base_page_ids: torch.Tensor, layout: DecodeLayout
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Where a layer's selected pages can be written directly: ``(indptr, indices)`` of the
        page list :meth:`decode` reads for ``layout``, already holding ``base_page_ids`` (so a
        later ``decode(..., base_page_ids, layout)`` attends what was written there), or ``None``
        when the backend reads ``page_ids`` itself (then the caller builds them; the reference)."""
        return None

    def decode_with_lse(
        self,
        layer: int,
        q: torch.Tensor,
        k_pages: torch.Tensor,
        v_pages: torch.Tensor,
        page_ids: torch.Tensor,
        layout: DecodeLayout,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`decode` plus each query's log-sum-exp of its scaled scores, when the kernel
        gives it: ``lse: [rows, G] float32``, ``log2(sum_t exp(q . k_t / sqrt(D)))`` (base 2, as
        FlashInfer returns it), or ``None`` (then H2O recomputes probabilities itself)."""
        return self.decode(layer, q, k_pages, v_pages, page_ids, layout), None
