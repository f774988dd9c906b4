"""FlashInfer's paged prefill for prompt chunks that continue a prompt (CUDA).

A chunk covers prompt positions ``start .. end - 1``. Its K/V is already in the request's pages,
so it attends keys ``0 .. end - 1`` straight from the paged cache with
``BatchPrefillWithPagedKVCacheWrapper`` (FA2): no gathered copy of the prefix, no explicit mask.
As in decode (:mod:`lil_sparse.attention.flashinfer_backend`) the pool holds one-head pages
(layout "HND"), so a kernel row is one (chunk, KV head) pair, planned with ``num_kv_heads=1`` and
the group's G query heads as ``num_qo_heads``:

- rows go chunk by chunk, KV head by KV head; row ``(c, h)`` has the chunk's ``C`` queries
  (``qo_indptr``) and the pages ``page_ids[h, :ceil(end / page_size)]`` (``paged_kv_indptr``,
  ``paged_kv_indices``; ``paged_kv_last_page_len = end - (pages - 1) * page_size``, so the
  row's ``kv_len`` is ``end``);
- ``causal=True``: with ``qo_len < kv_len`` FlashInfer aligns the mask to the bottom right
  (``include/flashinfer/attention/prefill.cuh``: key ``j`` is masked for query ``i`` iff
  ``j + qo_len > kv_len + i``), so query ``i`` sees keys ``0 .. start + i``: the mask of
  :func:`~lil_sparse.attention.chunked_prefill.chunk_attention`, which stays the reference (and
  the CPU path). Keys and values beyond ``kv_len`` in the last page are never attended.

``plan()`` runs once per prefill step (host indptrs, page ids gathered on the device: no sync);
every layer's ``run()`` reuses it. The packed queries ``[T, Hkv * G, D]`` are gathered into row
order ``[rows * C, G, D]`` with one indexing kernel per layer, and the output scattered back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk that continues a prompt, as the kernel sees it.

    - packed token rows ``row_start .. row_start + length - 1`` hold prompt positions
      ``prompt_start .. prompt_start + length - 1`` (``prompt_start > 0``);
    - ``page_ids: [Hkv, n] int64`` (device): the request's prompt pages per KV head in logical
      order (page ``i`` holds positions ``i * page_size ..``), ``n * page_size >= prompt_end``.
    """

    row_start: int
    prompt_start: int
    length: int
    page_ids: torch.Tensor

    @property
    def prompt_end(self) -> int:
        return self.prompt_start + self.length


class PagedChunkPrefill:
    """One FlashInfer paged-prefill wrapper, planned once per step for all its chunks.

    ``workspace``: FlashInfer's float scratch (uint8, on the device; shared with the backend's
    other wrappers, whose kernels run one after another on the same stream).
    """

    def __init__(self, workspace: torch.Tensor, page_size: int) -> None:
        import flashinfer

        self.page_size = page_size
        self.wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "HND", backend="fa2")
        self.plans = 0  # plan() calls so far: tests check that chunks really ran here
        self._token_index: torch.Tensor | None = None  # [R] int64: packed row of each kernel query
        self._head_index: torch.Tensor | None = None  # [R] int64: its KV head
        self._group = 0

    def plan(
        self,
        spans: Sequence[ChunkSpan],
        group: int,
        head_dim: int,
        q_dtype: torch.dtype,
        kv_dtype: torch.dtype,
    ) -> None:
        """Plan the step's chunks (``group`` query heads per KV head, ``head_dim`` per head).

        Raises ``ValueError`` for no chunk, an empty chunk, a chunk that starts a prompt (the
        ragged prefill runs those) or too few pages for a chunk's end.
        """
        if not spans:
            raise ValueError("plan() needs at least one chunk")
        device = spans[0].page_ids.device
        qo_lens, page_counts, last_lens = [], [], []
        indices, token_index, head_index = [], [], []
        for span in spans:
            if span.length < 1 or span.prompt_start < 1:
                raise ValueError(
                    f"a continuing chunk needs prompt_start >= 1 and length >= 1, got "
                    f"{span.prompt_start} and {span.length}"
                )
            num_kv_heads, held = span.page_ids.shape
            pages = -(-span.prompt_end // self.page_size)
            if pages > held:
                raise ValueError(f"a chunk ending at {span.prompt_end} needs {pages} pages, got {held}")
            qo_lens += [span.length] * num_kv_heads
            page_counts += [pages] * num_kv_heads
            last_lens += [span.prompt_end - (pages - 1) * self.page_size] * num_kv_heads
            indices.append(span.page_ids[:, :pages].reshape(-1))
            rows = torch.arange(span.row_start, span.row_start + span.length, device=device)
            heads = torch.arange(num_kv_heads, device=device)
            token_index.append(rows.expand(num_kv_heads, span.length).reshape(-1))
            head_index.append(heads.unsqueeze(1).expand(num_kv_heads, span.length).reshape(-1))
        qo_indptr = torch.tensor([0, *qo_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        kv_indptr = torch.tensor([0, *page_counts], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        self.wrapper.plan(
            qo_indptr,  # host int32 [rows + 1]; plan() reads it on the host, so no sync
            kv_indptr,  # host int32 [rows + 1]
            torch.cat(indices).to(torch.int32),  # device int32 [nnz pages]; kept by the wrapper
            torch.tensor(last_lens, dtype=torch.int32),  # host int32 [rows], 1 .. page_size
            group,  # num_qo_heads: the row's queries are its KV head's group
            1,  # num_kv_heads: one-head pages
            head_dim,
            self.page_size,
            causal=True,
            q_data_type=q_dtype,
            kv_data_type=kv_dtype,
        )
        self._token_index = torch.cat(token_index)
        self._head_index = torch.cat(head_index)
        self._group = group
        self.plans += 1

    def run(self, q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, out: torch.Tensor) -> None:
        """Attend the planned chunks for one layer and write their rows of ``out``.

        ``q: [T, Hkv * G, D]`` the step's packed queries (any strides; query head ``h * G + g``
        belongs to KV head ``h``); ``k_pages, v_pages: [num_pages, 1, page_size, D]`` the layer's
        cache; ``out: [T, Hkv * G, D]`` in ``q``'s dtype: the planned chunks' rows are
        overwritten, every other row is left alone.
        """
        if self._token_index is None or self._head_index is None:
            raise RuntimeError("plan() must run before run()")
        where = (self._token_index, self._head_index)
        rows_q = q.unflatten(1, (-1, self._group))[where]  # [R, G, D], contiguous
        rows_out = self.wrapper.run(rows_q, (k_pages, v_pages), out=torch.empty_like(rows_q))
        out.unflatten(1, (-1, self._group)).index_put_(where, rows_out)
