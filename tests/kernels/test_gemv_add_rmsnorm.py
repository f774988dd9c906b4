"""The output projection with the residual add and the next RMSNorm in its epilogue
(:func:`lil_sparse.kernels.gemv_add_rmsnorm.gemv_add_rmsnorm`, and
:func:`lil_sparse.kernels.linear.linear_add_rmsnorm`, which runs it for one CUDA row) against
the GEMV then :func:`add_rmsnorm`.

The residual after the add is the same bits; the normalised row sums its squares per block of
outputs, then over the blocks, so it sits within one rounding of the norm kernel's. The last
program leaves the ticket at zero, so the same ticket serves the next launch. On CPU the kernel
runs in Triton's interpreter (programs one after another; the H200 runs them at once).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels.fused_layers import add_rmsnorm
from lil_sparse.kernels.gemv import gemv
from lil_sparse.kernels.gemv_add_rmsnorm import gemv_add_rmsnorm
from lil_sparse.kernels.gemv_tiles import GemvTiles
from lil_sparse.kernels.linear import linear, linear_add_rmsnorm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-6


def randn(*shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def close(got, want, dtype):
    """Within one rounding of ``want`` (relative 2^-7 in bf16: the RMS differs by its sum order,
    then the norm rounds) or fp32 noise."""
    tol = 2**-7 if dtype == torch.bfloat16 else 1e-5
    return bool(((got.float() - want.float()).abs() <= tol * want.float().abs() + tol).all())


def ticket():
    return torch.zeros(1, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n, block_n", [(24, 2), (37, 4), (8, 8)])  # 12 programs, a partial block, one
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_the_epilogue_is_the_gemv_then_add_rmsnorm(dtype, n, block_n, has_bias, prefetch):
    k = 96
    x = randn(1, k, dtype=dtype, seed=0)
    weight = randn(n, k, dtype=dtype, seed=1)
    bias = randn(n, dtype=dtype, seed=2) if has_bias else None
    residual = randn(1, n, dtype=dtype, seed=3)
    norm_weight = randn(n, dtype=dtype, seed=4)
    tiles = GemvTiles(block_n, 32, 4, prefetch=prefetch)
    want_residual = residual.clone()
    want = add_rmsnorm(gemv(x, weight, bias, tiles), want_residual, norm_weight, EPS)
    counter = ticket()
    got = gemv_add_rmsnorm(x, weight, bias, residual, norm_weight, EPS, counter, tiles)
    assert got.shape == (1, n) and got.dtype == dtype
    assert torch.equal(residual, want_residual)  # updated in place, the same bits
    assert close(got, want, dtype)
    assert counter.item() == 0  # left for the next launch


def test_a_ticket_serves_launch_after_launch():
    """Three layers in a row through one ticket: each normalises its own row (a ticket left
    non-zero would make a wrong program the last and skip or misplace the norm)."""
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    counter, tiles = ticket(), GemvTiles(2, 32, 4)
    for seed in range(3):
        x, weight = randn(1, 64, dtype=dtype, seed=seed), randn(20, 64, dtype=dtype, seed=seed + 10)
        residual = randn(1, 20, dtype=dtype, seed=seed + 20)
        norm_weight = randn(20, dtype=dtype, seed=seed + 30)
        want_residual = residual.clone()
        want = add_rmsnorm(gemv(x, weight, None, tiles), want_residual, norm_weight, EPS)
        got = gemv_add_rmsnorm(x, weight, None, residual, norm_weight, EPS, counter, tiles)
        assert torch.equal(residual, want_residual) and close(got, want, dtype)
        assert counter.item() == 0


@pytest.mark.parametrize("rows", [1, 3])
def test_linear_add_rmsnorm_is_linear_then_add_rmsnorm(rows):
    """One row on CUDA runs the fused kernel, anything else the two kernels (or PyTorch off
    CUDA); either way the residual becomes residual + projection in place."""
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    x, weight = randn(rows, 64, dtype=dtype, seed=5), randn(48, 64, dtype=dtype, seed=6)
    residual, norm_weight = randn(rows, 48, dtype=dtype, seed=7), randn(48, dtype=dtype, seed=8)
    want_residual = residual.clone()
    want = add_rmsnorm(linear(x, weight), want_residual, norm_weight, EPS)
    counter = ticket()
    got = linear_add_rmsnorm(x, weight, None, residual, norm_weight, EPS, counter)
    assert torch.equal(residual, want_residual)
    assert close(got, want, dtype)
    assert counter.item() == 0


@pytest.mark.parametrize(
    "change, match",
    [
        ("residual_shape", "residual must be"),
        ("norm_dtype", "norm_weight must be"),
        ("ticket_dtype", "ticket must be"),
        ("two_rows", "one contiguous row"),
    ],
)
def test_gemv_add_rmsnorm_refuses_what_it_cannot_read(change, match):
    x, weight = randn(1, 32, dtype=torch.float32, seed=0), randn(16, 32, dtype=torch.float32, seed=1)
    residual, norm_weight = randn(1, 16, dtype=torch.float32, seed=2), torch.ones(16, device=DEVICE)
    counter = ticket()
    if change == "residual_shape":
        residual = randn(1, 8, dtype=torch.float32, seed=2)
    elif change == "norm_dtype":
        norm_weight = norm_weight.half()
    elif change == "ticket_dtype":
        counter = counter.long()
    else:
        x = randn(2, 32, dtype=torch.float32, seed=0)
    with pytest.raises(ValueError, match=match):
        gemv_add_rmsnorm(x, weight, None, residual, norm_weight, EPS, counter)
