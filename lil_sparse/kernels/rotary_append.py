"""A decode step's RoPE, K/V append and key-metadata update in one kernel per layer.

The fused model's decode layer otherwise runs two kernels between its QKV projection and the
attention: RoPE of the query and key heads (:func:`lil_sparse.kernels.fused_layers.rotary_qk`,
which writes q and k out) and the append of k and v to the cache pages with the Quest/InfLLM
metadata (:func:`lil_sparse.kernels.kv_append.append_decode_kv`, which reads k back). Here one
program per token and block of heads rotates its heads, writes the queries out and the rotated
keys and the values straight into their cache slots, and folds the keys into their pages'
metadata: one launch and one round trip of k fewer per layer. It computes exactly what the two
kernels compute (the same roundings, in the same order), so the two stay its reference, each with
its own PyTorch one.

Every load comes before the first store (Triton does not move a load above a store that may
alias it). With the metadata loaded between stores, as before, and all heads of a token in one
program, the kernel took 2.95 us per layer at the 1.5B shape's batch 1 and 4.31 at the 8B
shape's batch 8 (1.85 and 2.14 without the metadata); loads first and blocks of 4 heads take
1.42 and 1.57 (1.30 and 1.37): H200, 2026-11-30, an A/B of the two kernels in one process
over ``bench/append_micro.py``'s cases, CUDA graphs of 28 calls, medians of 50 replays, two
repeats within 0.05 us.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.fused_layers import TL_DTYPES, _rope_halves, rotate_half
from lil_sparse.kernels.kv_append import _fold_key, _load_page_metadata
from lil_sparse.kernels.launcher import KernelLauncher
from lil_sparse.kernels.pdl import launch_options, use_pdl, wait_for_previous
from lil_sparse.kv.key_metadata import KeyMetadata, check_key_metadata


@triton.jit
def _rotary_append_decode_kv(
    qk_ptr,  # [T, Hq + Hk, D] pre-RoPE: token stride qk_token, heads and dims contiguous
    v_ptr,  # [T, Hk, D] (strides v_token, v_head, 1)
    cos_ptr,  # [T, D // 2] float32
    sin_ptr,
    slots_ptr,  # [T * Hk] int64: page * page_size + offset
    q_out_ptr,  # [T, Hq, D] contiguous
    k_cache_ptr,  # [slots, D] this layer's keys
    v_cache_ptr,  # [slots, D]
    bounds_ptr,  # [pages, 2, D] this layer's key min / max (META only)
    key_sum_ptr,  # [pages, D] float32 (META only)
    key_mean_ptr,  # [pages, D] cache dtype (META only)
    q_heads,
    k_heads,
    qk_token,
    v_token,
    v_head,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    DTYPE: tl.constexpr,
    META: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    token = tl.program_id(0)
    head = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, HALF)[None, :]
    mask = head < q_heads + k_heads
    is_q = head < q_heads
    is_k = mask & ~is_q
    # RoPE exactly as fused_layers._rotary: the same helper.
    base = qk_ptr + token * qk_token + head * (2 * HALF) + dims
    low_half, high_half = _rope_halves(base, cos_ptr, sin_ptr, token, dims, mask, HALF, DTYPE)
    # The key heads' append, exactly as kv_append._append_decode_kv, one half at a time.
    k_head = tl.where(is_k, head - q_heads, 0)
    slot = tl.load(slots_ptr + token * k_heads + k_head, mask=is_k, other=0)
    v_src = v_ptr + token * v_token + k_head * v_head + dims
    v_low = tl.load(v_src, mask=is_k)
    v_high = tl.load(v_src + HALF, mask=is_k)
    page = slot // PAGE_SIZE
    low = bounds_ptr + page * 4 * HALF + dims  # the low half's min; + HALF: the high half's
    at = page * 2 * HALF + dims
    if META:  # every load before the first store (see kv_append._load_page_metadata)
        old_low_half = _load_page_metadata(low, low + 2 * HALF, key_sum_ptr + at, is_k)
        old_high_half = _load_page_metadata(low + HALF, low + 3 * HALF, key_sum_ptr + at + HALF, is_k)
    q_out = q_out_ptr + (token * q_heads + head) * (2 * HALF) + dims
    tl.store(q_out, low_half, mask=mask & is_q)
    tl.store(q_out + HALF, high_half, mask=mask & is_q)
    k_dst = k_cache_ptr + slot * (2 * HALF) + dims
    tl.store(k_dst, low_half.to(k_cache_ptr.dtype.element_ty), mask=is_k)
    tl.store(k_dst + HALF, high_half.to(k_cache_ptr.dtype.element_ty), mask=is_k)
    v_dst = v_cache_ptr + slot * (2 * HALF) + dims
    tl.store(v_dst, v_low.to(v_cache_ptr.dtype.element_ty), mask=is_k)
    tl.store(v_dst + HALF, v_high.to(v_cache_ptr.dtype.element_ty), mask=is_k)
    if META:
        mean = key_mean_ptr + at
        _fold_key(low, low + 2 * HALF, key_sum_ptr + at, mean, low_half, old_low_half, is_k, PAGE_SIZE)
        _fold_key(
            low + HALF, low + 3 * HALF, key_sum_ptr + at + HALF, mean + HALF, high_half, old_high_half, is_k,
            PAGE_SIZE,
        )  # fmt: skip


def rotary_append_decode_kv(
    qk: torch.Tensor,
    q_heads: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    metadata: KeyMetadata | None,
    slots: torch.Tensor,
    block_heads: int = 4,
) -> torch.Tensor:
    """RoPE of ``qk``'s heads, then one layer's K/V append with its metadata; returns q.

    ``qk: [T, Hq + Hk, D]`` pre-RoPE query and key heads ("rotate half" layout; any token
    stride, heads and dims contiguous: a slice of a fused QKV projection); ``q_heads``: Hq;
    ``cos, sin: [T, D // 2] float32``; ``v: [T, Hk, D]`` with unit inner stride; ``k_cache,
    v_cache: [pages, 1, page_size, D]`` (one layer, contiguous); ``metadata``: the layer's key
    bounds, sum and mean (:class:`KeyMetadata`), or None to leave them alone; ``slots: [T,
    Hk] int64`` (``page * page_size + offset``), every entry on a distinct page;
    ``block_heads``: heads per program, a power of two (a grid of tokens x head blocks; 4 ran
    fastest of 4, 8, 16 and all heads in one program on the 1.5B and 8B shapes with and without
    the metadata: an ad hoc sweep over ``bench/append_micro.py``'s cases, which times only the
    default, H200, 2026-11-30, printed output). Returns
    contiguous ``q: [T, Hq, D]`` in qk's dtype. Bit for bit :func:`rotary_qk` followed by
    :func:`append_decode_kv` of its k (their references: ``models.rope.apply_rotary`` and
    ``KVCache.write``). Raises ``ValueError`` on a layout it cannot read.
    """
    tokens, heads, head_dim = qk.shape
    k_heads = heads - q_heads
    if slots.shape != (tokens, k_heads) or v.shape != (tokens, k_heads, head_dim):
        shapes = f"qk {tuple(qk.shape)}, q_heads {q_heads}, slots {tuple(slots.shape)}, v {tuple(v.shape)}"
        raise ValueError(f"rotary_append_decode_kv: {shapes}")
    if qk.stride(2) != 1 or qk.stride(1) != head_dim or v.stride(2) != 1:
        raise ValueError("rotary_append_decode_kv: qk needs contiguous heads and dims, v a unit inner stride")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("rotary_append_decode_kv: the caches must be contiguous")
    if metadata is not None:
        check_key_metadata(metadata, head_dim, "rotary_append_decode_kv")
    q = torch.empty(tokens, q_heads, head_dim, dtype=qk.dtype, device=qk.device)
    if tokens == 0:
        return q
    if block_heads < 1 or block_heads & (block_heads - 1):
        raise ValueError(f"rotary_append_decode_kv: block_heads must be a power of two, got {block_heads}")
    block_heads = min(block_heads, triton.next_power_of_2(heads))
    _ROTARY_APPEND_DECODE_KV(
        (tokens, triton.cdiv(heads, block_heads)),
        qk,
        v,
        cos.contiguous(),
        sin.contiguous(),
        slots.reshape(-1).contiguous(),
        q,
        k_cache,
        v_cache,
        *(metadata if metadata is not None else (k_cache, k_cache, k_cache)),
        q_heads,
        k_heads,
        qk.stride(0),
        v.stride(0),
        v.stride(1),
        HALF=head_dim // 2,
        BLOCK_H=block_heads,
        PAGE_SIZE=k_cache.shape[2],
        DTYPE=TL_DTYPES[qk.dtype],
        META=metadata is not None,
        PDL=use_pdl(qk),
        **launch_options(qk),
    )
    return q


@triton.jit
def rope_append_rows(
    values, pid, cos_ptr, sin_ptr, slots_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, q_heads, k_heads,
    BLOCK_N: tl.constexpr, HALF: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    """The epilogue of a one-token QKV projection whose program ``pid`` computed ``values:
    [BLOCK_N]`` (``DTYPE``) of ``BLOCK_N / 2`` dims of one head and the same dims plus ``HALF``,
    interleaved (the ``ROPE`` row layout of :func:`lil_sparse.kernels.gemv._gemv`). Query and
    key heads are rotated by :func:`rotate_half`, as :func:`_rope_halves` rotates them (token 0's
    angles), queries stored to ``q_out [Hq, D]``, keys to ``k_cache`` and values to ``v_cache`` at
    their head's ``slots`` entry, as :func:`_rotary_append_decode_kv` stores them without
    metadata."""
    pairs: tl.constexpr = BLOCK_N // 2
    per_head = HALF // pairs
    head = pid // per_head
    dims = (pid % per_head) * pairs + tl.arange(0, pairs)
    first, second = tl.split(tl.reshape(values.to(tl.float32), (pairs, 2)))
    if head < q_heads + k_heads:
        low, high = rotate_half(first, second, tl.load(cos_ptr + dims), tl.load(sin_ptr + dims), DTYPE)
        if head < q_heads:
            q_dst = q_out_ptr + head * (2 * HALF) + dims
            tl.store(q_dst, low)
            tl.store(q_dst + HALF, high)
        else:
            k_dst = k_cache_ptr + tl.load(slots_ptr + head - q_heads) * (2 * HALF) + dims
            tl.store(k_dst, low.to(k_cache_ptr.dtype.element_ty))
            tl.store(k_dst + HALF, high.to(k_cache_ptr.dtype.element_ty))
    else:
        v_dst = v_cache_ptr + tl.load(slots_ptr + head - q_heads - k_heads) * (2 * HALF) + dims
        tl.store(v_dst, first.to(v_cache_ptr.dtype.element_ty))
        tl.store(v_dst + HALF, second.to(v_cache_ptr.dtype.element_ty))


# Direct launches once a specialization is known (lil_sparse/kernels/launcher.py).
_ROTARY_APPEND_DECODE_KV = KernelLauncher(_rotary_append_decode_kv)
