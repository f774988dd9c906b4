"""Fused elementwise pieces of a decoder layer: residual add + RMSNorm, RoPE on q and k, SiLU-mul.

Each replaces a chain of small PyTorch kernels (about 25 per layer in all) by one launch. They
round like their PyTorch references in :mod:`lil_sparse.models.layers` and
:mod:`lil_sparse.models.rope` do, op by op: every intermediate that PyTorch keeps in the model
dtype is rounded to it here too (``.to(DTYPE).to(fp32)``), so results match the references up
to the order of the RMS sum and one-ulp differences of ``exp``/``rsqrt``.
One program handles one token row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.launcher import KernelLauncher
from lil_sparse.kernels.pdl import launch_options, use_pdl, wait_for_previous

TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}
"""The Triton dtype of each torch dtype the kernels take (a kernel's ``DTYPE`` constexpr)."""


@triton.jit
def _add_rmsnorm(
    x_ptr,  # [T, N] the new branch output (or the hidden state when there is no residual)
    residual_ptr,  # [T, N] running residual, overwritten with x + residual when HAS_RESIDUAL
    weight_ptr,  # [N]
    out_ptr,  # [T, N] normalised
    n,
    x_stride,
    residual_stride,
    out_stride,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * residual_stride + cols, mask=mask, other=0.0).to(tl.float32)
        x = (x + residual).to(DTYPE)  # PyTorch adds in the model dtype
        tl.store(residual_ptr + row * residual_stride + cols, x, mask=mask)
        x = x.to(tl.float32)
    variance = tl.sum(x * x, axis=0) / n
    normed = (x * tl.math.rsqrt(variance + eps)).to(DTYPE).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, (normed * weight).to(DTYPE), mask=mask)


def add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """``residual += x`` (in place, when given) and return ``RMSNorm(residual or x) * weight``.

    ``x, residual: [T, N]`` in the model dtype (last dimension contiguous); ``weight: [N]`` same
    dtype. Returns ``[T, N]``. Reference: ``RMSNorm.forward(x + residual)``.
    """
    rows, n = x.shape
    out = torch.empty_like(x)
    if rows == 0:
        return out
    source = residual if residual is not None else x
    _ADD_RMSNORM(
        (rows,),
        x,
        source,
        weight,
        out,
        n,
        x.stride(0),
        source.stride(0),
        out.stride(0),
        eps,
        HAS_RESIDUAL=residual is not None,
        DTYPE=TL_DTYPES[x.dtype],
        BLOCK=triton.next_power_of_2(n),
        PDL=use_pdl(x),
        **launch_options(x),
    )
    return out


@triton.jit
def _rope_halves(base, cos_ptr, sin_ptr, token, dims, mask, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """RoPE ("rotate half") of the rows at ``base`` (a block of pointers to each row's first half;
    the second half is ``HALF`` further), ``token``'s angles at ``dims``: returns the rotated
    first and second halves in ``DTYPE``, rounded op by op as :func:`models.rope.apply_rotary`
    (the angles cast to the model dtype before multiplying)."""
    first = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    second = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    cos = tl.load(cos_ptr + token * HALF + dims)
    sin = tl.load(sin_ptr + token * HALF + dims)
    return rotate_half(first, second, cos, sin, DTYPE)


@triton.jit
def rotate_half(first, second, cos, sin, DTYPE: tl.constexpr):
    """RoPE of fp32 halves ``first``, ``second`` (values of the model dtype) by float32 angles
    ``cos``, ``sin``, rounded op by op as :func:`models.rope.apply_rotary` (the angles cast to
    the model dtype before multiplying): the rotated halves in ``DTYPE``."""
    cos = cos.to(DTYPE).to(tl.float32)
    sin = sin.to(DTYPE).to(tl.float32)
    a = (first * cos).to(DTYPE).to(tl.float32)
    b = (second * sin).to(DTYPE).to(tl.float32)
    c = (second * cos).to(DTYPE).to(tl.float32)
    d = (first * sin).to(DTYPE).to(tl.float32)
    return (a - b).to(DTYPE), (c + d).to(DTYPE)


@triton.jit
def _rotary(
    src_ptr,  # [T, Hq + Hk, D] strided: token stride, head stride D, element stride 1
    cos_ptr,  # [T, D // 2] float32
    sin_ptr,
    q_out_ptr,  # [T, Hq, D] contiguous: the first Hq heads
    k_out_ptr,  # [T, Hk, D] contiguous: the other Hk heads
    q_heads,
    k_heads,
    src_stride,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    DTYPE: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, HALF)[None, :]
    mask = head < q_heads + k_heads
    base = src_ptr + token * src_stride + head * (2 * HALF) + dims
    low_half, high_half = _rope_halves(base, cos_ptr, sin_ptr, token, dims, mask, HALF, DTYPE)
    is_q = head < q_heads
    q_out = q_out_ptr + (token * q_heads + head) * (2 * HALF) + dims
    k_out = k_out_ptr + (token * k_heads + head - q_heads) * (2 * HALF) + dims
    tl.store(q_out, low_half, mask=mask & is_q)
    tl.store(q_out + HALF, high_half, mask=mask & is_q)
    tl.store(k_out, low_half, mask=mask & ~is_q)
    tl.store(k_out + HALF, high_half, mask=mask & ~is_q)


def rotary_qk(
    qk: torch.Tensor, q_heads: int, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE of the query and key heads of ``qk: [T, Hq + Hk, D]`` ("rotate half" layout; any
    token stride, heads and dims contiguous, as a slice of a fused QKV projection);
    ``cos, sin: [T, D // 2] float32``. Returns contiguous ``q: [T, Hq, D]``, ``k: [T, Hk, D]``
    in qk's dtype. Reference: :func:`lil_sparse.models.rope.apply_rotary` on each."""
    tokens, heads, head_dim = qk.shape
    if qk.stride(2) != 1 or qk.stride(1) != head_dim:
        raise ValueError("qk: heads and head_dim must be contiguous")
    q = torch.empty(tokens, q_heads, head_dim, dtype=qk.dtype, device=qk.device)
    k = torch.empty(tokens, heads - q_heads, head_dim, dtype=qk.dtype, device=qk.device)
    if tokens == 0:
        return q, k
    _ROTARY(
        (tokens,),
        qk,
        cos.contiguous(),
        sin.contiguous(),
        q,
        k,
        q_heads,
        heads - q_heads,
        qk.stride(0),
        HALF=head_dim // 2,
        BLOCK_H=triton.next_power_of_2(heads),
        DTYPE=TL_DTYPES[qk.dtype],
    )
    return q, k


@triton.jit
def _silu_mul(
    gate_up_ptr,  # [T, 2I]: gate then up
    out_ptr,  # [T, I]
    width,
    stride,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(gate_up_ptr + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride + width + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * width + cols, silu_times(gate, up, DTYPE), mask=mask)


@triton.jit
def silu_times(gate, up, DTYPE: tl.constexpr):
    """``silu(gate) * up`` in ``DTYPE`` from float32 values of that dtype, rounding as PyTorch
    does op by op (``F.silu`` rounds to the dtype, then the product does)."""
    silu = (gate / (1.0 + tl.exp(-gate))).to(DTYPE).to(tl.float32)
    return (silu * up).to(DTYPE)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``gate_up: [T, 2I]`` (gate in the first half). Returns ``[T, I]``.
    Reference: ``F.silu(gate) * up`` in :class:`lil_sparse.models.layers.MLP`."""
    tokens, double = gate_up.shape
    width = double // 2
    out = torch.empty(tokens, width, dtype=gate_up.dtype, device=gate_up.device)
    if tokens == 0:
        return out
    block = 1024
    _SILU_MUL(
        (tokens, triton.cdiv(width, block)),
        gate_up,
        out,
        width,
        gate_up.stride(0),
        DTYPE=TL_DTYPES[gate_up.dtype],
        BLOCK=block,
    )
    return out


# Direct launches once a specialization is known (lil_sparse/kernels/launcher.py).
_ADD_RMSNORM = KernelLauncher(_add_rmsnorm)
_ROTARY = KernelLauncher(_rotary)
_SILU_MUL = KernelLauncher(_silu_mul)
