"""A decode step's K/V append and key-metadata update in one kernel per layer.

Per layer a decode step writes one key and one value per (sequence, KV head) row into that row's
newest page and, when a Quest or InfLLM request is in the step, folds the key into the page's
metadata: element-wise min and max (Quest's bounds, cache dtype), the fp32 key sum and the key
mean rounded from it (InfLLM, cache dtype).
In PyTorch that is two ``index_copy_`` plus about six gathers, element-wise ops and scatters
(:meth:`lil_sparse.kv.KVCache.write`, the reference); here one program per row does all of it.
A decode step's rows write distinct pages, so no two programs touch the same metadata row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.launcher import KernelLauncher
from lil_sparse.kv.key_metadata import KeyMetadata, check_key_metadata


@triton.jit
def _append_decode_kv(
    k_ptr,  # [T, H, D] new keys (strides k_token, k_head, 1)
    v_ptr,  # [T, H, D] new values (strides v_token, v_head, 1)
    slots_ptr,  # [T * H] int64: page * page_size + offset
    k_cache_ptr,  # [slots, D] this layer's keys
    v_cache_ptr,  # [slots, D]
    bounds_ptr,  # [pages, 2, D] this layer's key min / max (META only)
    key_sum_ptr,  # [pages, D] float32 (META only)
    key_mean_ptr,  # [pages, D] cache dtype (META only)
    k_token,
    k_head,
    v_token,
    v_head,
    HEADS: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    META: tl.constexpr,
):
    row = tl.program_id(0)
    token = row // HEADS
    head = row % HEADS
    dims = tl.arange(0, HEAD_DIM)
    slot = tl.load(slots_ptr + row)
    key = tl.load(k_ptr + token * k_token + head * k_head + dims)
    value = tl.load(v_ptr + token * v_token + head * v_head + dims)
    page = slot // PAGE_SIZE
    low = bounds_ptr + page * 2 * HEAD_DIM + dims
    at = page * HEAD_DIM + dims
    if META:  # every load before the first store (see _load_page_metadata)
        old = _load_page_metadata(low, low + HEAD_DIM, key_sum_ptr + at, None)
    tl.store(k_cache_ptr + slot * HEAD_DIM + dims, key.to(k_cache_ptr.dtype.element_ty))
    tl.store(v_cache_ptr + slot * HEAD_DIM + dims, value.to(v_cache_ptr.dtype.element_ty))
    if META:
        _fold_key(low, low + HEAD_DIM, key_sum_ptr + at, key_mean_ptr + at, key, old, None, PAGE_SIZE)


@triton.jit
def _load_page_metadata(low, high, total, mask):
    """The metadata :func:`_fold_key` updates, at its pointers: ``(min, max, sum)``. Load it
    before the program's first store: Triton keeps a load after any store that may alias it, so
    loads issued between stores wait out one memory latency each (six for a key folded in two
    halves), while loads issued together overlap."""
    return tl.load(low, mask=mask), tl.load(high, mask=mask), tl.load(total, mask=mask)


@triton.jit
def _fold_key(low, high, total, mean, key, old, mask, PAGE_SIZE: tl.constexpr):
    """Fold ``key`` into its page's metadata, element by element at these pointers: the min at
    ``low`` and the max at ``high`` (the bounds' dtype), the fp32 sum at ``total`` and, rounded
    from the new sum, the mean ``sum * (1 / PAGE_SIZE)`` at ``mean`` (its dtype). ``old``: what
    :func:`_load_page_metadata` loaded at ``low, high, total``. ``mask``: the elements to touch,
    or None for all. The rule of :meth:`lil_sparse.kv.KVCache.write`, which every append kernel
    applies through this one helper."""
    old_low, old_high, old_total = old
    bounds_dtype = low.dtype.element_ty
    # Round the key to the bounds' dtype first (as the reference does), then compare in fp32:
    # exact for values of that dtype, and Triton 3.9's CPU interpreter compares bf16 wrongly.
    bound = key.to(bounds_dtype).to(tl.float32)
    tl.store(low, tl.minimum(old_low.to(tl.float32), bound).to(bounds_dtype), mask=mask)
    tl.store(high, tl.maximum(old_high.to(tl.float32), bound).to(bounds_dtype), mask=mask)
    new_total = old_total + key.to(tl.float32)
    tl.store(total, new_total, mask=mask)
    tl.store(mean, (new_total * (1.0 / PAGE_SIZE)).to(mean.dtype.element_ty), mask=mask)


def append_decode_kv(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    metadata: KeyMetadata | None,
    slots: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
) -> None:
    """Write one layer's new keys and values and, when given, fold the keys into the metadata.

    ``k_cache, v_cache: [pages, 1, page_size, D]`` (one layer, contiguous); ``metadata``: the
    layer's key bounds, sum and mean (:class:`KeyMetadata`), or None to leave them alone;
    ``slots: [T, H] int64`` (``page * page_size + offset``), every entry on a distinct page;
    ``k, v: [T, H, D]`` with unit inner stride. Keys are cast to the bounds' dtype for min/max and
    to fp32 for the sum, whose new value times ``1 / page_size`` is rounded to the mean, as the
    reference does. Raises ``ValueError`` on a layout it cannot read.
    """
    tokens, heads, head_dim = k.shape
    if slots.shape != (tokens, heads) or v.shape != k.shape:
        shapes = f"slots {tuple(slots.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        raise ValueError(f"append_decode_kv: {shapes}")
    if k.stride(2) != 1 or v.stride(2) != 1 or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("append_decode_kv: k and v need a unit inner stride, caches must be contiguous")
    if metadata is not None:
        check_key_metadata(metadata, head_dim, "append_decode_kv")
    if tokens * heads == 0:
        return
    _APPEND_DECODE_KV(
        (tokens * heads,),
        k,
        v,
        slots.reshape(-1).contiguous(),
        k_cache,
        v_cache,
        *(metadata if metadata is not None else (k_cache, k_cache, k_cache)),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        HEADS=heads,
        PAGE_SIZE=k_cache.shape[2],
        HEAD_DIM=head_dim,
        META=metadata is not None,
    )


# Direct launches once a specialization is known (lil_sparse/kernels/launcher.py).
_APPEND_DECODE_KV = KernelLauncher(_append_decode_kv)
