"""Attention of one prompt chunk over the request's earlier prompt KV, in plain PyTorch.

A chunk covers prompt positions ``start .. end - 1``. Its K/V has just been written to the
request's pages, so the keys it attends (positions ``0 .. end - 1``) are all in the paged cache:
they are gathered once per layer (``[end, Hkv, D]``, linear in the prompt) and attended with
``scaled_dot_product_attention`` under a ``[chunk, end]`` causal mask (query ``i`` sees key ``j``
iff ``j <= start + i``). Nothing is quadratic in the prompt beyond chunk x prefix, so a chunk
costs time linear in the prompt length.

Runs on any device and dtype (scores in SDPA's own precision): the reference backend's path (and
so the CPU's), and the reference that FlashInfer's paged chunk prefill
(:mod:`lil_sparse.attention.flashinfer_chunk_prefill`) is tested against on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_prompt_tokens(pages: torch.Tensor, page_ids: torch.Tensor, length: int) -> torch.Tensor:
    """Keys (or values) of positions ``0 .. length - 1`` from one request's pages.

    ``pages: [num_pages, 1, page_size, D]`` (one layer's K or V); ``page_ids: [Hkv, n] int64``
    the request's pages per KV head in logical order (page ``i`` holds positions
    ``i * page_size ..``), ``n * page_size >= length``. Returns ``[length, Hkv, D]`` in the
    cache dtype.
    """
    page_size, head_dim = pages.shape[2], pages.shape[3]
    num_kv_heads = page_ids.shape[0]
    used = page_ids[:, : -(-length // page_size)]
    return pages[used].reshape(num_kv_heads, -1, head_dim)[:, :length].transpose(0, 1)


def gather_prompt_kv(
    k_pages: torch.Tensor, v_pages: torch.Tensor, page_ids: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gather_prompt_tokens` of both K and V: ``(k, v)``, each ``[length, Hkv, D]``."""
    return gather_prompt_tokens(k_pages, page_ids, length), gather_prompt_tokens(v_pages, page_ids, length)


def chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of the last ``C`` positions' queries over every key up to them.

    ``q: [C, Hq, D]`` queries of positions ``L - C .. L - 1``; ``k, v: [L, Hkv, D]`` keys and
    values of positions ``0 .. L - 1`` (``Hq`` a multiple of ``Hkv``). Returns ``[C, Hq, D]`` in
    ``q``'s dtype. The mask is ``[C, L]`` bool; with ``C == L`` this is plain causal prefill.
    """
    chunk, num_heads, _ = q.shape
    length, num_kv_heads, _ = k.shape
    if chunk > length:
        raise ValueError(f"a chunk of {chunk} queries needs at least {chunk} keys, got {length}")
    group = num_heads // num_kv_heads
    start = length - chunk
    query_pos = torch.arange(start, length, device=q.device).unsqueeze(1)
    mask = torch.arange(length, device=q.device).unsqueeze(0) <= query_pos  # [C, L]
    keys = k.to(q.dtype).transpose(0, 1).repeat_interleave(group, dim=0)  # [Hq, L, D]
    values = v.to(q.dtype).transpose(0, 1).repeat_interleave(group, dim=0)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), keys, values, attn_mask=mask)
    return out.transpose(0, 1)
