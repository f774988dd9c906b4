"""Which kernel a linear layer of the fused model runs: one CUDA token row through the Triton
GEMV of :mod:`lil_sparse.kernels.gemv` (a decode step at batch 1), 2 to 32 CUDA rows through the
skinny GEMM of :mod:`lil_sparse.kernels.skinny_gemm` on the weights where it beat cuBLAS
(:func:`~lil_sparse.kernels.skinny_gemm.skinny_pays`), everything else through PyTorch (cuBLAS
on CUDA), so callers need not know the row count.
"""

from __future__ import annotations

import torch

from lil_sparse.kernels.fused_layers import add_rmsnorm, silu_mul
from lil_sparse.kernels.gemv import (
    RopeAppend,
    gemv,
    gemv_rmsnorm,
    gemv_rmsnorm_rope_append,
    gemv_silu_mul,
    mislaid_norm_input,
    rope_refusal,
)
from lil_sparse.kernels.gemv_tiles import choose_tiles
from lil_sparse.kernels.linear_operands import weight_refusal
from lil_sparse.kernels.skinny_gemm import skinny_linear, skinny_pays, skinny_refusal, skinny_silu_mul


def _one_cuda_row(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether :func:`gemv` takes ``x`` (one contiguous CUDA row) with ``weight`` and ``bias``."""
    rows_ok = x.is_cuda and x.dim() == 2 and x.shape[0] == 1 and x.is_contiguous()
    return rows_ok and weight_refusal(x, weight, bias) is None


def _skinny_takes(x: torch.Tensor, weight: torch.Tensor, n: int, bias: torch.Tensor | None = None) -> bool:
    """Whether :func:`skinny_linear` takes ``x`` and ``weight`` (``n`` output columns) and pays."""
    if not x.is_cuda or x.dim() != 2 or not skinny_pays(n, weight.shape[1], x.shape[0]):
        return False
    return skinny_refusal(x, weight, bias) is None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` that runs one CUDA row through :func:`gemv`, 2-32 CUDA rows through
    :func:`skinny_linear` where it pays, and everything else through PyTorch (cuBLAS).
    ``x: [T, K]``, ``weight: [N, K]``, ``bias: [N]`` or None -> ``[T, N]``."""
    if _one_cuda_row(x, weight, bias):
        return gemv(x, weight, bias)
    if _skinny_takes(x, weight, weight.shape[0], bias):
        return skinny_linear(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def gate_up_silu_mul(x: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of ``linear(x, gate_up)``: one kernel for one CUDA row
    (:func:`gemv_silu_mul`) and for 2-32 where it pays (:func:`skinny_silu_mul`), ``F.linear``
    then the SiLU-mul kernel for other CUDA rows, and plain PyTorch off CUDA. ``x: [T, K]``,
    ``gate_up: [2I, K]`` (gate rows first) -> ``[T, I]``."""
    if _one_cuda_row(x, gate_up):
        return gemv_silu_mul(x, gate_up)
    if gate_up.shape[0] % 2 == 0 and _skinny_takes(x, gate_up, gate_up.shape[0] // 2):
        return skinny_silu_mul(x, gate_up)
    projected = torch.nn.functional.linear(x, gate_up)
    if not x.is_cuda:
        gate, up = projected.chunk(2, dim=-1)
        return torch.nn.functional.silu(gate) * up
    return silu_mul(projected)


def norm_inside_gemv(n: int, k: int) -> bool:
    """Whether one row's RMSNorm runs inside the GEMV of an ``[n, k]`` weight
    (:func:`gemv_rmsnorm`). Every program of that kernel reads and reduces the whole ``k``-wide
    row again, so it pays only where the tiles make few programs of several short rows:
    :func:`~lil_sparse.kernels.gemv_tiles.choose_tiles`' rows under 4096 columns with fewer than 4096
    outputs (2 or 4 rows per program). Measured on the H200: the 1.5B QKV (2048 x 1536, 512
    programs) in :func:`rmsnorm_linear`'s figures below; the 1.5B gate/up halves (8960 x 1536)
    slower at 4 to 16 rows per program; every 8B batch-1 cell of the 2026-12-01 00:07 report,
    with the norm inside the 8B QKV GEMV (6144 x 4096: 6144 programs of one row) and the GEMV
    prefetch on every shape, 0.32-0.41 ms slower than at 23:30 (docs/gpu.md)."""
    return k < 4096 and n < 4096


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

    One CUDA row of a weight where :func:`norm_inside_gemv` runs :func:`gemv_rmsnorm` (one
    kernel, the residual after the add in a new tensor); anything else runs :func:`add_rmsnorm`
    then :func:`linear` (``residual`` updated in place). Use the returned residual either way.
    ``x, residual: [T, K]``, ``norm_weight: [K]``, ``weight: [N, K]``, ``bias: [N]`` or None, one
    dtype.

    Measured on the H200 (2026-11-30, about 23:57 UTC, ``bench/decode_e2e.py`` at the 1.5B shape,
    4k tokens, batch 1, dense, two rounds in one process, printed output): the input norm inside
    the QKV GEMV 1.22 / 1.22 ms per step against 1.23 / 1.24 with the norm kernel. The
    post-attention norm inside the gate/up GEMV was slower (1.26 / 1.26 ms at 4 rows per
    program, 1.27 at 8, 1.31 at 16): its 8960 outputs make many programs, each re-reading and
    reducing the row, so the model keeps :func:`add_rmsnorm` there. So it does after the output
    projection: that norm inside the output GEMV (its last program, found by an atomic ticket,
    normalising the row) was 1.188-1.189 against 1.167-1.172 ms (2026-12-01 about 06:55).
    """
    fits = _one_cuda_row(x, weight, bias) and norm_inside_gemv(weight.shape[0], x.shape[1])
    if fits and mislaid_norm_input(x, residual, norm_weight) is None:
        return gemv_rmsnorm(x, residual, norm_weight, eps, weight, bias)
    normed = add_rmsnorm(x, residual, norm_weight, eps)
    return linear(normed, weight, bias), x if residual is None else residual


def rmsnorm_qkv_rope_append(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    rope: RopeAppend,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One CUDA token's input norm, QKV projection, RoPE and K/V append in one kernel
    (:func:`~lil_sparse.kernels.gemv.gemv_rmsnorm_rope_append`): ``(q [1, Hq, D], x +
    residual)``, or None where that kernel does not run (more rows, off CUDA, a weight whose norm
    stays outside the GEMV, :func:`norm_inside_gemv`, or inputs it refuses); the caller then runs
    :func:`rmsnorm_linear` and its own RoPE and append, which this equals bit for bit.

    Measured on the H200 (2026-12-01 04:47 UTC, ``bench/decode_e2e.py`` at the 1.5B shape, 4k
    tokens, batch 1, three rounds alternating in one process, both of the benchmark's runs,
    printed output): dense 1.170-1.173 ms per step against 1.175-1.179 with the RoPE and append
    kernel; sink@1024 1.152 against 1.157-1.161."""
    n = weight.shape[0]
    if not (_one_cuda_row(x, weight, bias) and norm_inside_gemv(n, x.shape[1])):
        return None
    if mislaid_norm_input(x, residual, norm_weight) is not None:
        return None
    if rope_refusal(x, weight, rope, choose_tiles(n, x.shape[1])) is not None:
        return None
    return gemv_rmsnorm_rope_append(x, residual, norm_weight, eps, weight, bias, rope)
