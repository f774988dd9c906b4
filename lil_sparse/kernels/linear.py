"""Which kernel a linear layer of the fused model runs: one CUDA token row through the Triton
GEMV of :mod:`lil_sparse.kernels.gemv` (a decode step at batch 1), everything else through
PyTorch (cuBLAS on CUDA), so callers need not know the row count.
"""

from __future__ import annotations

import torch

from lil_sparse.kernels.fused_layers import add_rmsnorm, silu_mul
from lil_sparse.kernels.gemv import MAX_WEIGHT_ELEMENTS, gemv, gemv_rmsnorm, gemv_silu_mul


def _one_cuda_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    rows_ok = x.is_cuda and x.dim() == 2 and x.shape[0] == 1 and x.is_contiguous() and weight.stride(1) == 1
    return rows_ok and weight.numel() < MAX_WEIGHT_ELEMENTS and (bias is None or bias.is_contiguous())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` that runs one CUDA row through :func:`gemv` and everything else through
    PyTorch (cuBLAS). ``x: [T, K]``, ``weight: [N, K]``, ``bias: [N]`` or None -> ``[T, N]``."""
    if _one_cuda_row(x, weight, bias):
        return gemv(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def gate_up_silu_mul(x: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``linear(x, gate_up)``: one kernel for one CUDA row
    (:func:`gemv_silu_mul`), ``F.linear`` then the SiLU-mul kernel for more CUDA rows, and plain
    PyTorch off CUDA. ``x: [T, K]``, ``gate_up: [2I, K]`` (gate rows first) -> ``[T, I]``."""
    if _one_cuda_row(x, gate_up):
        return gemv_silu_mul(x, gate_up)
    projected = torch.nn.functional.linear(x, gate_up)
    if not x.is_cuda:
        gate, up = projected.chunk(2, dim=-1)
        return torch.nn.functional.silu(gate) * up
    return silu_mul(projected)


def _norm_laid_out(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor) -> bool:
    """Whether :func:`gemv_rmsnorm` takes these: ``residual`` laid out as ``x``, the norm weight
    one contiguous ``[K]``, both of x's dtype."""

    def laid_out(tensor: torch.Tensor, shape: tuple[int, ...]) -> bool:
        return tensor.shape == shape and tensor.is_contiguous() and tensor.dtype == x.dtype

    return (residual is None or laid_out(residual, x.shape)) and laid_out(norm_weight, (x.shape[1],))


def rmsnorm_linear(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear(add_rmsnorm(x, residual, norm_weight, eps), weight, bias)`` and the residual after
    the add: ``(out [T, N], x + residual)`` (``x`` itself when ``residual`` is None).

    One CUDA row runs :func:`gemv_rmsnorm` (one kernel, the residual after the add in a new
    tensor); other shapes run :func:`add_rmsnorm` then :func:`linear` (``residual`` updated in
    place). Use the returned residual either way. ``x, residual: [T, K]``, ``norm_weight: [K]``,
    ``weight: [N, K]``, ``bias: [N]`` or None, one dtype.

    Measured on the H200 (2026-11-30, about 23:57 UTC, ``bench/decode_e2e.py`` at the 1.5B shape,
    4k tokens, batch 1, dense, two rounds in one process, printed output): the input norm inside
    the QKV GEMV 1.22 / 1.22 ms per step against 1.23 / 1.24 with the norm kernel. The
    post-attention norm inside the gate/up GEMV was slower (1.26 / 1.26 ms at 4 rows per
    program, 1.27 at 8, 1.31 at 16): its 8960 outputs make many programs, each re-reading and
    reducing the row, so the model keeps :func:`add_rmsnorm` there.
    """
    if _one_cuda_row(x, weight, bias) and _norm_laid_out(x, residual, norm_weight):
        return gemv_rmsnorm(x, residual, norm_weight, eps, weight, bias)
    normed = add_rmsnorm(x, residual, norm_weight, eps)
    return linear(normed, weight, bias), x if residual is None else residual
