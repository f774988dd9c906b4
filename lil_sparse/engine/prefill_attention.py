"""The model's ``AttentionFn`` for one prefill call: prompt chunks of one or more requests.

Every chunk's K/V is written to its request's pages first (with the key metadata Quest and
InfLLM read), then attended:

- chunks that start at position 0 (a whole prompt, or the first chunk of a long one) are packed
  first and run as one ragged causal prefill on the backend (FlashInfer's on CUDA);
- a later chunk attends the request's earlier prompt KV from its pages plus itself, causally
  (:func:`~lil_sparse.attention.chunked_prefill.chunk_attention`), on any device.

A policy that watches prefill attention (H2O) sees each chunk's queries against every key up to
the chunk's end, so the attention mass it records is the one a single pass would record.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lil_sparse.attention.backend import AttentionBackend
from lil_sparse.attention.chunked_prefill import chunk_attention, gather_prompt_kv
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

    def __call__(self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.kv.write(layer_index, self.slots, k, v, update_metadata=self.update_metadata)
        fresh_rows = self.fresh_cu_seqlens[-1]
        if fresh_rows == q.shape[0]:  # no continuing chunk: the plain ragged prefill
            out = self.backend.prefill(q, k, v, self.fresh_cu_seqlens)
        else:
            out = torch.empty_like(q)
            if fresh_rows:
                out[:fresh_rows] = self.backend.prefill(
                    q[:fresh_rows], k[:fresh_rows], v[:fresh_rows], self.fresh_cu_seqlens
                )
        for chunk in self.chunks:
            rows = slice(chunk.row_start, chunk.row_end)
            if chunk.prompt_start == 0:
                keys = k[rows]
            else:
                keys, values = gather_prompt_kv(
                    self.kv.k[layer_index], self.kv.v[layer_index], chunk.page_ids, chunk.prompt_end
                )
                out[rows] = chunk_attention(q[rows], keys, values)
            if chunk.observer is not None and chunk.token_pages is not None:
                chunk.observer.observe_prefill(
                    layer_index, q[rows], keys, chunk.token_pages, self.kv, chunk.prompt_tokens
                )
        return out
