"""The model's ``AttentionFn`` for one prefill call: prompt chunks of one or more requests.

Every chunk's K/V is written to its request's pages first (with the key metadata Quest and
InfLLM read), then attended:

- chunks that start at position 0 (a whole prompt, or the first chunk of a long one) are packed
  first and run as one ragged causal prefill on the backend (FlashInfer's on CUDA);
- later chunks attend the request's earlier prompt KV from its pages plus themselves, causally:
  on a backend with a paged chunk kernel (FlashInfer's paged prefill,
  :mod:`~lil_sparse.attention.flashinfer_chunk_prefill`) all of them in one kernel per layer,
  planned once per call; otherwise each on its gathered KV
  (:func:`~lil_sparse.attention.chunked_prefill.chunk_attention`, any device: the reference).

A policy that watches prefill attention (H2O) sees each chunk's queries against every key up to
the chunk's end (gathered from the pages for a later chunk), so the attention mass it records is
the one a single pass would record, whichever kernel computed the attention output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lil_sparse.attention.backend import AttentionBackend
from lil_sparse.attention.chunked_prefill import chunk_attention, gather_prompt_kv, gather_prompt_tokens
from lil_sparse.attention.flashinfer_chunk_prefill import ChunkSpan
from lil_sparse.kv import KVCache
from lil_sparse.policies import SelectionPolicy


@dataclass(frozen=True)
class ChunkRows:
    """Where one chunk sits in the call's packed tokens and in its request's prompt.

    - ``rows``: packed token rows ``row_start .. row_end - 1`` hold prompt positions
      ``prompt_start .. prompt_start + (row_end - row_start) - 1``.
    - ``page_ids: [Hkv, n] int64``: the request's prompt pages per KV head, logical order.
    - ``observer``: the request's policy if it watches prefill attention, else ``None``.
    - ``token_pages: [Hkv, prompt_end] int64``: page of each token so far (observers only).
    """

    row_start: int
    row_end: int
    prompt_start: int
    prompt_tokens: int
    page_ids: torch.Tensor
    observer: SelectionPolicy | None = None
    token_pages: torch.Tensor | None = None

    @property
    def prompt_end(self) -> int:
        return self.prompt_start + self.row_end - self.row_start


class PrefillAttention:
    def __init__(
        self,
        kv: KVCache,
        backend: AttentionBackend,
        slots: torch.Tensor,
        chunks: list[ChunkRows],
        update_metadata: bool = True,
    ) -> None:
        """``slots: [T, Hkv] int64`` cache slot of every packed token per KV head; ``chunks`` in
        packed order, those with ``prompt_start == 0`` first."""
        self.kv = kv
        self.backend = backend
        self.slots = slots
        self.chunks = chunks
        self.update_metadata = update_metadata
        fresh = [c for c in chunks if c.prompt_start == 0]
        if any(c.prompt_start == 0 for c in chunks[len(fresh) :]):
            raise ValueError("chunks that start a prompt must come first in the packed tokens")
        self.fresh_cu_seqlens = [0, *(c.row_end for c in fresh)]
        continuing = chunks[len(fresh) :]
        self.paged = backend.chunk_prefill() if continuing else None
        self.spans = [
            ChunkSpan(c.row_start, c.prompt_start, c.row_end - c.row_start, c.page_ids) for c in continuing
        ]
        self.planned = False  # the paged kernel is planned on the first layer, for every layer

    def __call__(self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        v = v.contiguous()  # the ragged prefill kernels read dense values (a no-op when unfused)
        self.kv.write(layer_index, self.slots, k, v, update_metadata=self.update_metadata)
        fresh_rows = self.fresh_cu_seqlens[-1]
        if fresh_rows == q.shape[0]:  # no continuing chunk: the plain ragged prefill
            out = self.backend.prefill(q, k, v, self.fresh_cu_seqlens)
        else:
            out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
            if fresh_rows:
                out[:fresh_rows] = self.backend.prefill(
                    q[:fresh_rows], k[:fresh_rows], v[:fresh_rows], self.fresh_cu_seqlens
                )
        k_pages, v_pages = self.kv.k[layer_index], self.kv.v[layer_index]
        if self.paged is not None:
            if not self.planned:
                group = q.shape[1] // k.shape[1]
                self.paged.plan(self.spans, group, q.shape[2], q.dtype, k_pages.dtype)
                self.planned = True
            self.paged.run(q, k_pages, v_pages, out)
        for chunk in self.chunks:
            rows = slice(chunk.row_start, chunk.row_end)
            if chunk.prompt_start > 0 and self.paged is None:
                keys, values = gather_prompt_kv(k_pages, v_pages, chunk.page_ids, chunk.prompt_end)
                out[rows] = chunk_attention(q[rows], keys, values)
            if chunk.observer is None or chunk.token_pages is None:
                continue
            if chunk.prompt_start == 0:
                keys = k[rows]
            elif self.paged is not None:  # the paged kernel gathered nothing: the observer's keys
                keys = gather_prompt_tokens(k_pages, chunk.page_ids, chunk.prompt_end)
            chunk.observer.observe_prefill(
                layer_index, q[rows], keys, chunk.token_pages, self.kv, chunk.prompt_tokens
            )
        return out
