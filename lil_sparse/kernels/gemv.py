"""One-token linear layers (``y = x @ W^T + b`` for a single row ``x``) as a Triton GEMV.

A decode step at batch 1 multiplies one token row by every weight matrix: the work is reading
the weights once. cuBLAS picks GEMM tiles for it that leave much of the bandwidth unused on small
matrices: on an H200, at the 1.5B shape, the QKV and output projections (4-6 MB each) took 6.1
and 6.7 us against 1.5 and 1.1 us of bytes, the MLP's down projection 11.8 us against 6.5
(``bench/gemv_micro.py``, docs/gpu.md). Here every program streams ``BLOCK_N`` whole weight rows
in contiguous ``BLOCK_K`` runs, keeps ``[BLOCK_N, BLOCK_K]`` fp32 partial products in registers and
reduces them once at the end. Splitting ``K`` across programs (cuBLAS's split-K) never won in the
tile sweep, so there is none. Launched with PDL (:mod:`lil_sparse.kernels.pdl`), each program
loads its first two weight tiles before it waits for the previous kernel where :func:`choose_tiles`
found that faster: weights are written by no kernel of a step (H200, 2026-11-30 23:37 UTC,
``bench/decode_e2e.py`` at the 1.5B shape, 4k tokens, batch 1, dense, two rounds in one process:
1.26 / 1.26 ms per step against 1.29 / 1.29 without). :func:`gemv_rmsnorm` runs the residual
add and RMSNorm before the product, in the same kernel.

Numerics: the products are summed in fp32 and rounded to the output dtype once, bias added in
fp32 before that rounding, as cuBLAS does; only the order of the sum differs, so results equal
``F.linear`` up to one rounding of each output (the tests compare both with the fp32 product).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.fused_layers import TL_DTYPES, silu_times
from lil_sparse.kernels.gemv_tiles import GemvTiles, choose_tiles
from lil_sparse.kernels.launcher import KernelLauncher
from lil_sparse.kernels.linear_operands import weight_refusal
from lil_sparse.kernels.pdl import launch_options, use_pdl, wait_for_previous
from lil_sparse.kernels.rotary_append import rope_append_rows


@triton.jit
def _prefetch_weight_tile(
    w_ptr, rows, row_mask, w_stride, k0, K: tl.constexpr, BLOCK_K: tl.constexpr, WANTED: tl.constexpr = True
):
    """The ``[BLOCK_N, BLOCK_K]`` weight tile of ``rows`` from column ``k0`` (zeros past ``K``;
    all zeros, nothing loaded, unless ``WANTED``). Weights are written by no kernel of a step, so
    a PDL kernel may load them before its wait (the ``_prefetch_`` prefix is what
    tests/kernels/test_pdl.py allows there)."""
    cols = k0 + tl.arange(0, BLOCK_K)
    offsets = rows[:, None] * w_stride + cols[None, :]
    if WANTED:
        return tl.load(
            w_ptr + offsets,
            mask=row_mask[:, None] & (cols < K)[None, :],
            other=0.0,
            eviction_policy="evict_first",  # read once per step: keep L2 for activations
        )
    return tl.zeros(offsets.shape, w_ptr.dtype.element_ty)


@triton.jit
def _row_block_dots(
    x_ptr, res_ptr, norm_ptr, rstd, w_ptr, rows, row_mask, w_stride, w0, w1,
    K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREFETCH: tl.constexpr,
    NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    """fp32 ``[BLOCK_N]`` dot products of the weight rows ``rows`` with the input row
    (:func:`_input_tile`): ``[BLOCK_N, BLOCK_K]`` partial products over the K loop, reduced once
    at the end. The first ``PREFETCH`` tiles come loaded (``w0``, ``w1``); the sum runs in the
    same order either way."""
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    if PREFETCH >= 1:
        x = _input_tile(x_ptr, res_ptr, norm_ptr, rstd, 0, K, BLOCK_K, NORM, HAS_RESIDUAL, DTYPE)
        acc += x[None, :] * w0.to(tl.float32)
    if PREFETCH >= 2:
        x = _input_tile(x_ptr, res_ptr, norm_ptr, rstd, BLOCK_K, K, BLOCK_K, NORM, HAS_RESIDUAL, DTYPE)
        acc += x[None, :] * w1.to(tl.float32)
    for k0 in range(PREFETCH * BLOCK_K, K, BLOCK_K):
        w = _prefetch_weight_tile(w_ptr, rows, row_mask, w_stride, k0, K, BLOCK_K)
        x = _input_tile(x_ptr, res_ptr, norm_ptr, rstd, k0, K, BLOCK_K, NORM, HAS_RESIDUAL, DTYPE)
        acc += x[None, :] * w.to(tl.float32)
    return tl.sum(acc, axis=1)


@triton.jit
def _input_tile(
    x_ptr, res_ptr, norm_ptr, rstd, k0,
    K: tl.constexpr, BLOCK_K: tl.constexpr, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    DTYPE: tl.constexpr,
):  # fmt: skip
    """fp32 ``[BLOCK_K]`` of the GEMV's input row from column ``k0`` (zeros past ``K``): ``x``, or
    with ``NORM`` the RMSNorm of ``x`` (plus the residual) times the norm weight, rounded as
    :func:`lil_sparse.kernels.fused_layers.add_rmsnorm` rounds; ``rstd`` from :func:`_rms`."""
    cols = k0 + tl.arange(0, BLOCK_K)
    mask = cols < K
    x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if NORM:
        if HAS_RESIDUAL:
            x = (x + tl.load(res_ptr + cols, mask=mask, other=0.0).to(tl.float32)).to(DTYPE).to(tl.float32)
        normed = (x * rstd).to(DTYPE).to(tl.float32)
        x = (normed * tl.load(norm_ptr + cols, mask=mask, other=0.0).to(tl.float32)).to(DTYPE).to(tl.float32)
    return x


@triton.jit
def _rms(
    x_ptr, res_ptr, res_out_ptr, eps,
    K: tl.constexpr, NORM_BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    """``rsqrt(mean(h^2) + eps)`` of the row ``h = x (+ residual)``, rounded to ``DTYPE`` after the
    add as :func:`lil_sparse.kernels.fused_layers.add_rmsnorm` rounds it; program 0 stores ``h``
    at ``res_out_ptr`` when there is a residual (a new tensor: other programs still read the old
    residual)."""
    cols = tl.arange(0, NORM_BLOCK)
    mask = cols < K
    x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h = (x + tl.load(res_ptr + cols, mask=mask, other=0.0).to(tl.float32)).to(DTYPE)
        if tl.program_id(0) == 0:  # a scalar branch: Triton 3.9's interpreter takes no int mask
            tl.store(res_out_ptr + cols, h, mask=mask)
        x = h.to(tl.float32)
    return tl.math.rsqrt(tl.sum(x * x, axis=0) / K + eps)


@triton.jit
def _gemv(
    x_ptr,  # [K]
    w_ptr,  # [N, K] (SILU_MUL: [2N, K], gate rows then up rows), rows contiguous
    bias_ptr,  # [N], or unused
    out_ptr,  # [N]
    res_ptr,  # NORM and HAS_RESIDUAL: [K] the residual before the add, else unused
    res_out_ptr,  # NORM and HAS_RESIDUAL: [K] receives x + residual, else unused
    norm_ptr,  # NORM: [K] the RMSNorm weight, else unused
    cos_ptr,  # ROPE: [D // 2] float32, the token's angles, else unused
    sin_ptr,
    slots_ptr,  # ROPE: [Hk] int64 cache slots, else unused
    k_cache_ptr,  # ROPE: [slots, D] this layer's keys, else unused
    v_cache_ptr,
    q_heads,
    k_heads,
    eps,
    n,
    w_stride,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU_MUL: tl.constexpr,
    NORM: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    NORM_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREFETCH: tl.constexpr,
    DTYPE: tl.constexpr,
    PDL: tl.constexpr,
    ROPE: tl.constexpr,
    HALF: tl.constexpr,
):
    # With ROPE each program takes BLOCK_N / 2 dims of one head and the same dims plus HALF,
    # interleaved, so it can rotate them (rope_append_rows); else BLOCK_N consecutive rows.
    rows = (
        (tl.program_id(0) // (HALF // (BLOCK_N // 2))) * (2 * HALF)
        + (tl.program_id(0) % (HALF // (BLOCK_N // 2))) * (BLOCK_N // 2)
        + tl.arange(0, BLOCK_N) // 2
        + (tl.arange(0, BLOCK_N) % 2) * HALF
        if ROPE
        else tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    )
    row_mask = rows < n
    # Each program's first weight tiles load while the previous kernel still runs (PDL).
    up_rows = rows + n
    gate0 = _prefetch_weight_tile(w_ptr, rows, row_mask, w_stride, 0, K, BLOCK_K, PREFETCH >= 1)
    gate1 = _prefetch_weight_tile(w_ptr, rows, row_mask, w_stride, BLOCK_K, K, BLOCK_K, PREFETCH >= 2)
    up0 = _prefetch_weight_tile(w_ptr, up_rows, row_mask, w_stride, 0, K, BLOCK_K, SILU_MUL and PREFETCH >= 1)
    up1 = _prefetch_weight_tile(
        w_ptr, up_rows, row_mask, w_stride, BLOCK_K, K, BLOCK_K, SILU_MUL and PREFETCH >= 2
    )
    wait_for_previous(PDL)
    rstd = 0.0
    if NORM:
        rstd = _rms(x_ptr, res_ptr, res_out_ptr, eps, K, NORM_BLOCK, HAS_RESIDUAL, DTYPE)
    total = _row_block_dots(
        x_ptr, res_ptr, norm_ptr, rstd, w_ptr, rows, row_mask, w_stride, gate0, gate1,
        K, BLOCK_N, BLOCK_K, PREFETCH, NORM, HAS_RESIDUAL, DTYPE,
    )  # fmt: skip
    if SILU_MUL:  # the gate/up projection's output rounds to DTYPE before silu_mul reads it
        up = _row_block_dots(
            x_ptr, res_ptr, norm_ptr, rstd, w_ptr, up_rows, row_mask, w_stride, up0, up1,
            K, BLOCK_N, BLOCK_K, PREFETCH, NORM, HAS_RESIDUAL, DTYPE,
        )  # fmt: skip
        gate = total.to(DTYPE).to(tl.float32)
        tl.store(out_ptr + rows, silu_times(gate, up.to(DTYPE).to(tl.float32), DTYPE), mask=row_mask)
    else:
        if HAS_BIAS:
            total += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        if ROPE:  # out_ptr: the queries [Hq, D]
            rope_append_rows(
                total.to(DTYPE), tl.program_id(0), cos_ptr, sin_ptr, slots_ptr, out_ptr, k_cache_ptr,
                v_cache_ptr, q_heads, k_heads, BLOCK_N, HALF, DTYPE,
            )  # fmt: skip
        else:
            tl.store(out_ptr + rows, total.to(DTYPE), mask=row_mask)


def gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, tiles: GemvTiles | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for one row of ``x``.

    ``x: [1, K]`` (contiguous), ``weight: [N, K]`` with contiguous rows, ``bias: [N]`` (contiguous) or None,
    all one dtype (bf16, fp16 or fp32). Returns ``[1, N]`` in that dtype. ``tiles`` overrides
    :func:`choose_tiles` (benchmarks). Raises ValueError for more than one row, or for the weight
    and bias :func:`~lil_sparse.kernels.linear_operands.weight_refusal` names (mismatched shapes
    or dtypes, a strided bias, a weight too large for 32-bit offsets).
    """
    n = weight.shape[0]
    _check(x, weight, bias)
    return _launch(x, weight, bias, n, False, tiles or choose_tiles(n, x.shape[1]))[0]


def gemv_silu_mul(x: torch.Tensor, gate_up: torch.Tensor, tiles: GemvTiles | None = None) -> torch.Tensor:
    """``silu_mul(F.linear(x, gate_up))`` for one row of ``x``, in one kernel: each program reads
    its gate rows and the matching up rows, and writes ``silu(gate) * up`` rounded as
    :func:`lil_sparse.kernels.fused_layers.silu_mul` rounds the projection's rounded output, so
    the result equals :func:`gemv` with the same ``tiles`` followed by ``silu_mul`` bit for bit
    (other tiles may sum a row in another order: each default picks its own).

    ``x: [1, K]``; ``gate_up: [2I, K]`` (gate rows, then up rows; rows contiguous), one dtype.
    Returns ``[1, I]``. ``tiles``: per program ``block_n`` gate rows and as many up rows (default
    :func:`choose_tiles` of the ``[I, K]`` halves). Raises ValueError as :func:`gemv` does, or for
    an odd number of rows.
    """
    double = gate_up.shape[0]
    if double % 2:
        raise ValueError(f"gemv_silu_mul: gate_up has {double} rows, want gate and up halves")
    _check(x, gate_up, None)
    return _launch(x, gate_up, None, double // 2, True, tiles or choose_tiles(double // 2, x.shape[1]))[0]


def gemv_rmsnorm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    tiles: GemvTiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``gemv(add_rmsnorm(x, residual, norm_weight, eps), weight, bias)`` for one row, in one
    kernel, and the residual after the add: ``(out [1, N], x + residual)`` (``x`` itself when
    ``residual`` is None; else a new tensor, ``residual`` is left as it was).

    Every program computes the row's RMS itself (the ``K``-wide row read from L2, so it pays only
    where the outputs make few programs) and program 0 writes ``x + residual``. The result equals
    :func:`~lil_sparse.kernels.fused_layers.add_rmsnorm` then :func:`gemv` up to the order of the
    RMS sum. ``residual: [1, K]`` contiguous or None and ``norm_weight: [K]`` contiguous, x's
    dtype; otherwise as :func:`gemv`, whose ValueErrors it raises, and for a mislaid residual or
    norm weight.
    """
    _check(x, weight, bias)
    mislaid = mislaid_norm_input(x, residual, norm_weight)
    if mislaid is not None:
        raise ValueError(f"gemv_rmsnorm: {mislaid}")
    n = weight.shape[0]
    return _launch(
        x, weight, bias, n, False, tiles or choose_tiles(n, x.shape[1]), (residual, norm_weight, eps)
    )


class RopeAppend(NamedTuple):
    """Where :func:`gemv_rmsnorm_rope_append` sends one token's projection: ``cos, sin: [1, D //
    2] float32`` (the token's angles), ``slots: [1, Hk] int64`` (cache slot of each key head's
    new entry), ``k_cache, v_cache: [pages, 1, page_size, D]`` (one layer, contiguous, x's
    dtype), ``q_heads``, ``k_heads`` (Hq, Hk; the weight's rows are Hq query, Hk key then Hk
    value heads of D)."""

    cos: torch.Tensor
    sin: torch.Tensor
    slots: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    q_heads: int
    k_heads: int


def gemv_rmsnorm_rope_append(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    rope: RopeAppend,
    tiles: GemvTiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token's QKV projection, RoPE and K/V append in one kernel: :func:`gemv_rmsnorm` (the
    input norm inside), then, in each program's epilogue, what
    :func:`~lil_sparse.kernels.rotary_append.rotary_append_decode_kv` does without key metadata.
    Returns ``(q [1, Hq, D], x + residual)``; the keys and values go to ``rope.k_cache`` and
    ``rope.v_cache`` at ``rope.slots``. Bit for bit :func:`gemv_rmsnorm` with the same ``tiles``
    followed by ``rotary_append_decode_kv(..., metadata=None)``: each program takes ``block_n /
    2`` dims of one head and the same dims ``D / 2`` further, so it rotates its own outputs.

    ``tiles`` (default :func:`choose_tiles`) must have ``2 <= block_n`` and ``block_n / 2``
    dividing ``D / 2``. Raises ValueError as :func:`gemv_rmsnorm` does, and for a ``rope`` whose
    shapes, dtypes or tiles do not fit (:func:`rope_refusal`).
    """
    _check(x, weight, bias)
    mislaid = mislaid_norm_input(x, residual, norm_weight)
    if mislaid is not None:
        raise ValueError(f"gemv_rmsnorm_rope_append: {mislaid}")
    n = weight.shape[0]
    tiles = tiles or choose_tiles(n, x.shape[1])
    refusal = rope_refusal(x, weight, rope, tiles)
    if refusal is not None:
        raise ValueError(f"gemv_rmsnorm_rope_append: {refusal}")
    return _launch(x, weight, bias, n, False, tiles, (residual, norm_weight, eps), rope)


def rope_refusal(x: torch.Tensor, weight: torch.Tensor, rope: RopeAppend, tiles: GemvTiles) -> str | None:
    """Why :func:`gemv_rmsnorm_rope_append` cannot take ``rope`` with ``tiles`` (a sentence), or
    None."""
    k_cache, v_cache = rope.k_cache, rope.v_cache
    head_dim = k_cache.shape[-1] if k_cache.dim() == 4 else 0
    half = head_dim // 2
    heads = rope.q_heads + 2 * rope.k_heads
    if head_dim < 2 or head_dim % 2 or weight.shape[0] != heads * head_dim:
        return f"weight rows {weight.shape[0]} are not {heads} heads of the caches' head_dim {head_dim}"
    if tiles.block_n < 2 or half % (tiles.block_n // 2):
        return f"tiles of {tiles.block_n} rows cannot pair dims of head_dim {head_dim}"
    if v_cache.shape != k_cache.shape or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        return "the caches must be two contiguous [pages, 1, page_size, D] tensors"
    if k_cache.dtype != x.dtype or v_cache.dtype != x.dtype:
        return f"the caches must be x's {x.dtype}"
    for name, tensor, shape, dtype in (
        ("cos", rope.cos, (1, half), torch.float32),
        ("sin", rope.sin, (1, half), torch.float32),
        ("slots", rope.slots, (1, rope.k_heads), torch.int64),
    ):
        if tuple(tensor.shape) != shape or tensor.dtype != dtype or not tensor.is_contiguous():
            return f"{name} must be a contiguous {shape} {dtype} tensor"
    return None


def mislaid_norm_input(
    x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor
) -> str | None:
    """What :func:`gemv_rmsnorm` refuses in its norm inputs (``"residual must be a contiguous
    ..."``), or None: ``residual`` (if any) must be laid out as ``x``, ``norm_weight`` one
    contiguous ``[K]``, both of x's dtype."""
    for name, tensor, shape in (("residual", residual, x.shape), ("norm_weight", norm_weight, (x.shape[1],))):
        if tensor is not None and (
            tensor.shape != shape or not tensor.is_contiguous() or tensor.dtype != x.dtype
        ):
            return f"{name} must be a contiguous {tuple(shape)} {x.dtype} tensor"
    return None


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if x.dim() != 2 or x.shape[0] != 1 or not x.is_contiguous():
        raise ValueError(f"gemv: x must be one contiguous row [1, K], got {tuple(x.shape)}")
    refusal = weight_refusal(x, weight, bias)
    if refusal is not None:
        raise ValueError(f"gemv: {refusal}")


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    fuse_silu: bool,
    tiles: GemvTiles,
    norm: tuple[torch.Tensor | None, torch.Tensor, float] | None = None,
    rope: RopeAppend | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The GEMV over ``x`` (or, given ``norm = (residual, norm weight, eps)``, over the RMSNorm of
    ``x + residual``): returns ``(out [1, n], x + residual)`` (``x`` itself without a residual);
    with ``rope``, ``out`` is the rotated queries ``[1, Hq, D]`` and the keys and values go to the
    caches."""
    if rope is None:
        out = torch.empty((1, n), dtype=x.dtype, device=x.device)
        rope_args: tuple[object, ...] = (weight,) * 5 + (0, 0)  # unused pointers and head counts
        half = 1
    else:
        half = rope.k_cache.shape[-1] // 2
        out = torch.empty((1, rope.q_heads, 2 * half), dtype=x.dtype, device=x.device)
        rope_args = tuple(rope)
    residual, norm_weight, eps = norm if norm is not None else (None, weight, 0.0)
    res_out = x if residual is None else torch.empty_like(x)
    _GEMV(
        (triton.cdiv(n, tiles.block_n),),
        x, weight, weight if bias is None else bias, out, x if residual is None else residual, res_out,
        norm_weight, *rope_args, eps, n, weight.stride(0),
        K=x.shape[1], HAS_BIAS=bias is not None, SILU_MUL=fuse_silu, NORM=norm is not None,
        HAS_RESIDUAL=residual is not None, NORM_BLOCK=triton.next_power_of_2(x.shape[1]),
        BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, PREFETCH=tiles.prefetch, DTYPE=TL_DTYPES[x.dtype],
        PDL=use_pdl(x), ROPE=rope is not None, HALF=half, num_warps=tiles.warps, **launch_options(x),
    )  # fmt: skip
    return out, res_out


# Direct launches once a specialization is known (lil_sparse/kernels/launcher.py).
_GEMV = KernelLauncher(_gemv)
