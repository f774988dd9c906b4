"""One token's output projection, residual add and the next RMSNorm in one kernel.

A decoder layer at batch 1 runs ``o_proj`` (a :func:`~lil_sparse.kernels.gemv.gemv`) and then
:func:`~lil_sparse.kernels.fused_layers.add_rmsnorm` (``residual += o``; the post-attention norm
of it): two links of the step's kernel chain for ~1.5k values. Here the GEMV's programs add their
own outputs to the residual and write each block's sum of squares; the last program to finish
(a ticket counter, reset by that program for the next launch) sums the blocks in program order
and writes the normalised row. The norm needs every output, so only that program runs it: a
``[hidden]`` row and one float per program, read from L2.

Numerics: the projection rounds as :func:`~lil_sparse.kernels.gemv.gemv` with the same tiles (bit
for bit), the residual as ``add_rmsnorm`` (bit for bit); the normalised row equals
``add_rmsnorm``'s up to the order of the sum of squares (per block of ``block_n`` outputs, then
over the blocks), as :func:`~lil_sparse.kernels.gemv.gemv_rmsnorm`'s does.

Ordering: each program stores, waits at a CTA barrier, then takes its ticket with an acq_rel
atomic at GPU scope (the pattern of CUDA's threadFenceReduction sample and cooperative groups'
grid sync: the barrier orders the block's stores before the releasing atomic); the last program
reads the others' stores through L2 (``.cg``) after its acquiring atomic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.fused_layers import TL_DTYPES
from lil_sparse.kernels.gemv import _prefetch_weight_tile, _row_block_dots
from lil_sparse.kernels.gemv_tiles import GemvTiles, choose_tiles
from lil_sparse.kernels.linear_operands import weight_refusal
from lil_sparse.kernels.pdl import launch_options, use_pdl, wait_for_previous


@triton.jit
def _gemv_add_rmsnorm(
    x_ptr,  # [K] the attention output row
    w_ptr,  # [N, K] rows contiguous
    bias_ptr,  # [N], or unused
    res_ptr,  # [N] the residual, overwritten with residual + projection
    norm_ptr,  # [N] the RMSNorm weight
    out_ptr,  # [N] receives the normalised row
    partial_ptr,  # [programs] float32 scratch: each program's sum of squares
    ticket_ptr,  # [1] int32, 0 between launches
    eps,
    n,
    w_stride,
    K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREFETCH: tl.constexpr,
    ROW_BLOCK: tl.constexpr,  # next power of two of N
    PARTIAL_BLOCK: tl.constexpr,  # next power of two of the program count
    DTYPE: tl.constexpr,
    PDL: tl.constexpr,
):
    program = tl.program_id(0)
    rows = program * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n
    w0 = _prefetch_weight_tile(w_ptr, rows, row_mask, w_stride, 0, K, BLOCK_K, PREFETCH >= 1)
    w1 = _prefetch_weight_tile(w_ptr, rows, row_mask, w_stride, BLOCK_K, K, BLOCK_K, PREFETCH >= 2)
    wait_for_previous(PDL)
    total = _row_block_dots(
        x_ptr, x_ptr, x_ptr, 0.0, w_ptr, rows, row_mask, w_stride, w0, w1,
        K, BLOCK_N, BLOCK_K, PREFETCH, False, False, DTYPE,
    )  # fmt: skip
    if HAS_BIAS:
        total += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    projected = total.to(DTYPE).to(tl.float32)  # linear's output, then add_rmsnorm's add
    residual = tl.load(res_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    h = (projected + residual).to(DTYPE)
    tl.store(res_ptr + rows, h, mask=row_mask)
    h32 = tl.where(row_mask, h.to(tl.float32), 0.0)
    tl.store(partial_ptr + program, tl.sum(h32 * h32, axis=0))
    tl.debug_barrier()  # every thread's stores before the releasing ticket
    ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == tl.num_programs(0) - 1:  # the last program: every block is in
        tl.store(ticket_ptr, 0)
        blocks = tl.arange(0, PARTIAL_BLOCK)
        in_launch = blocks < tl.num_programs(0)
        partial = tl.load(partial_ptr + blocks, mask=in_launch, other=0.0, cache_modifier=".cg")
        rstd = tl.math.rsqrt(tl.sum(partial, axis=0) / n + eps)
        cols = tl.arange(0, ROW_BLOCK)
        mask = cols < n
        row = tl.load(res_ptr + cols, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
        normed = (row * rstd).to(DTYPE).to(tl.float32)
        weight = tl.load(norm_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + cols, (normed * weight).to(DTYPE), mask=mask)


def gemv_add_rmsnorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    ticket: torch.Tensor,
    tiles: GemvTiles | None = None,
) -> torch.Tensor:
    """``add_rmsnorm(gemv(x, weight, bias), residual, norm_weight, eps)`` for one row, in one
    kernel: ``residual`` becomes ``residual + x @ weight^T (+ bias)`` in place and the normalised
    row ``[1, N]`` is returned.

    ``x: [1, K]`` contiguous; ``weight: [N, K]`` rows contiguous; ``bias: [N]`` or None;
    ``residual: [1, N]`` contiguous and ``norm_weight: [N]``, all one dtype (bf16, fp16, fp32);
    ``ticket: [1]`` int32 on x's device, zero, owned by the caller and used by one launch at a
    time (the kernel leaves it zero); ``tiles`` default :func:`choose_tiles` (the GEMV's).
    Raises ValueError where :func:`~lil_sparse.kernels.gemv.gemv` would, or for a mislaid
    residual, norm weight or ticket (:func:`add_rmsnorm_refusal`).
    """
    refusal = add_rmsnorm_refusal(x, weight, bias, residual, norm_weight, ticket)
    if refusal is not None:
        raise ValueError(f"gemv_add_rmsnorm: {refusal}")
    n = weight.shape[0]
    tiles = tiles or choose_tiles(n, x.shape[1])
    programs = triton.cdiv(n, tiles.block_n)
    out = torch.empty_like(residual)
    partial = torch.empty(programs, dtype=torch.float32, device=x.device)
    _gemv_add_rmsnorm[(programs,)](
        x, weight, weight if bias is None else bias, residual, norm_weight, out, partial, ticket,
        eps, n, weight.stride(0),
        K=x.shape[1], HAS_BIAS=bias is not None, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        PREFETCH=tiles.prefetch, ROW_BLOCK=triton.next_power_of_2(n),
        PARTIAL_BLOCK=triton.next_power_of_2(programs), DTYPE=TL_DTYPES[x.dtype], PDL=use_pdl(x),
        num_warps=tiles.warps, **launch_options(x),
    )  # fmt: skip
    return out


def add_rmsnorm_refusal(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    ticket: torch.Tensor,
) -> str | None:
    """Why :func:`gemv_add_rmsnorm` cannot take these operands (a sentence), or None: ``x`` one
    contiguous row, ``weight`` and ``bias`` as :func:`~lil_sparse.kernels.gemv.gemv` takes them
    (:func:`~lil_sparse.kernels.linear_operands.weight_refusal`), the residual and norm weight
    laid out as the ``[1, N]`` output and its ``[N]`` weight in x's dtype, the ticket one int32
    on x's device."""
    if x.dim() != 2 or x.shape[0] != 1 or not x.is_contiguous():
        return f"x must be one contiguous row [1, K], got {tuple(x.shape)}"
    refusal = weight_refusal(x, weight, bias)
    if refusal is not None:
        return refusal
    n = weight.shape[0]
    for name, tensor, shape in (("residual", residual, (1, n)), ("norm_weight", norm_weight, (n,))):
        laid_out = tuple(tensor.shape) == shape and tensor.is_contiguous()
        if not laid_out or tensor.dtype != x.dtype or tensor.device != x.device:
            return f"{name} must be a contiguous {shape} {x.dtype} tensor on {x.device}"
    if tuple(ticket.shape) != (1,) or ticket.dtype != torch.int32 or ticket.device != x.device:
        return f"ticket must be one int32 on {x.device}"
    return None
