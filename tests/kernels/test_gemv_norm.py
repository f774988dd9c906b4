"""The GEMV with the residual add and RMSNorm in its prologue (:func:`lil_sparse.kernels.gemv.gemv_rmsnorm`,
and :func:`lil_sparse.kernels.linear.rmsnorm_linear`, which runs it for one CUDA row) against
:func:`add_rmsnorm` then the GEMV; the kernel also with the SiLU-mul epilogue, which it supports.

Every program computes the row's RMS itself; only the order of that fp32 sum may differ from the
norm kernel's, so the outputs sit within one rounding of the two-kernel result, and the residual
after the add is the same bits. On CPU the kernel runs in Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels import gemv as gemv_module
from lil_sparse.kernels.fused_layers import add_rmsnorm, silu_mul
from lil_sparse.kernels.gemv import gemv, gemv_rmsnorm
from lil_sparse.kernels.gemv_tiles import GemvTiles
from lil_sparse.kernels.linear import linear, norm_inside_gemv, rmsnorm_linear

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-6


def randn(*shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def close(got, want, dtype):
    """Within two roundings of ``want`` (relative 2^-7 each in bf16: the interpreter truncates;
    the RMS differs by its sum order, then the norm and the product round) or fp32 noise."""
    tol = 2**-6 if dtype == torch.bfloat16 else 1e-5
    return bool(((got.float() - want.float()).abs() <= tol * want.float().abs() + tol).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k", [40, 64, 200])  # a partial tile, one tile, four tiles of 64
@pytest.mark.parametrize("has_residual", [True, False])
@pytest.mark.parametrize("fused_silu", [False, True])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_norm_prologue_is_add_rmsnorm_then_the_gemv(dtype, k, has_residual, fused_silu, prefetch):
    x = randn(1, k, dtype=dtype, seed=0)
    residual = randn(1, k, dtype=dtype, seed=1) if has_residual else None
    norm_weight = randn(k, dtype=dtype, seed=2)
    weight = randn(48 if fused_silu else 24, k, dtype=dtype, seed=3)
    bias = None if fused_silu else randn(24, dtype=dtype, seed=4)
    tiles = GemvTiles(2, 64, 4, prefetch=prefetch)
    before = None if residual is None else residual.clone()
    if fused_silu:  # the kernel's SiLU-mul epilogue with the norm (no public entry takes both)
        norm = (residual, norm_weight, EPS)
        got, got_residual = gemv_module._launch(x, weight, None, 24, True, tiles, norm)
    else:
        got, got_residual = gemv_rmsnorm(x, residual, norm_weight, EPS, weight, bias, tiles)
    summed = None if residual is None else residual.clone()
    normed = add_rmsnorm(x, summed, norm_weight, EPS)  # summed += x
    want = silu_mul(gemv(normed, weight, None, tiles)) if fused_silu else gemv(normed, weight, bias, tiles)
    assert got.shape == want.shape == (1, 24) and got.dtype == dtype
    if residual is None:
        assert got_residual is x
    else:  # x + residual rounded once, in a new tensor: the residual passed in is untouched
        assert torch.equal(got_residual, summed) and torch.equal(residual, before)
        assert got_residual.data_ptr() != residual.data_ptr()
    assert close(got, want, dtype)


@pytest.mark.parametrize("rows", [1, 3])
def test_rmsnorm_linear_returns_the_residual_after_the_add(rows):
    """One row on CUDA runs the fused kernel (a new residual tensor); anything else runs the two
    kernels and updates the residual in place. Either way the returned residual is x + residual
    and the output the projection of its norm."""
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    norm_weight, weight = randn(64, dtype=dtype, seed=7), randn(32, 64, dtype=dtype, seed=8)
    x, residual = randn(rows, 64, dtype=dtype, seed=5), randn(rows, 64, dtype=dtype, seed=6)
    summed = residual.clone()
    normed = add_rmsnorm(x, summed, norm_weight, EPS)  # summed += x
    out, new_residual = rmsnorm_linear(x, residual.clone(), norm_weight, EPS, weight)
    assert torch.equal(new_residual, summed)
    assert close(out, linear(normed, weight), dtype)
    _, no_residual = rmsnorm_linear(x, None, norm_weight, EPS, weight)
    assert no_residual is x


@pytest.mark.parametrize(
    "residual_shape, norm_shape, match",
    [((1, 63), (64,), "residual must be"), ((1, 64), (32,), "norm_weight must be")],
)
def test_gemv_rmsnorm_refuses_mislaid_inputs(residual_shape, norm_shape, match):
    x, weight = torch.zeros(1, 64, device=DEVICE), torch.zeros(8, 64, device=DEVICE)
    residual, norm_weight = torch.zeros(residual_shape, device=DEVICE), torch.zeros(norm_shape, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        gemv_rmsnorm(x, residual, norm_weight, EPS, weight)


@pytest.mark.parametrize(
    "n, k, inside",
    [
        (2048, 1536, True),  # 1.5B QKV: 512 programs of 4 rows, measured faster
        (960, 576, True),  # SmolLM2 QKV
        (6144, 4096, False),  # 8B QKV: 6144 programs of one row, each reducing the row
        (8960, 1536, False),  # 1.5B gate/up halves: measured slower
    ],
)
def test_the_norm_runs_inside_the_gemv_only_for_few_short_rows(n, k, inside):
    assert norm_inside_gemv(n, k) is inside
