"""The one-token GEMV (:mod:`lil_sparse.kernels.gemv`) against the fp32 product it rounds.

``F.linear`` in bf16 and the GEMV both sum in fp32 and round once; they differ only in the order
of the sum, so each output must sit within one rounding of the fp32 product (bf16: 2^-8 relative
on the GPU; Triton's CPU interpreter rounds bf16 by truncation, a full ulp, 2^-7). fp32 outputs
agree with the fp32 product up to the order of the sum.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from lil_sparse.kernels.fused_layers import silu_mul
from lil_sparse.kernels.gemv import gemv, gemv_silu_mul
from lil_sparse.kernels.gemv_tiles import GemvTiles, choose_tiles
from lil_sparse.kernels.linear import gate_up_silu_mul, linear
from lil_sparse.kernels.linear_operands import weight_refusal

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROUNDING = {
    torch.bfloat16: 2**-8 if DEVICE == "cuda" else 2**-7,
    torch.float16: 2**-10 if DEVICE == "cuda" else 2**-9,
}
TILES = [None, GemvTiles(block_n=4, block_k=64, warps=4), GemvTiles(block_n=8, block_k=32, warps=1)]


def randn(*shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def fp32_product(x, weight, bias):
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n, k", [(40, 96), (33, 200), (1, 1100), (300, 64), (17, 2500)])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("tiles", TILES, ids=["chosen", "4x64", "8x32"])
def test_gemv_is_the_fp32_product_rounded_once(dtype, n, k, has_bias, tiles):
    x = randn(1, k, dtype=dtype, seed=0)
    weight = randn(n, k, dtype=dtype, seed=1)
    bias = randn(n, dtype=dtype, seed=2) if has_bias else None
    out = gemv(x, weight, bias, tiles)
    assert out.shape == (1, n) and out.dtype == dtype
    exact = fp32_product(x, weight, bias)
    if dtype == torch.float32:
        torch.testing.assert_close(out, exact, rtol=1e-5, atol=1e-4)
    else:
        # within one rounding of the exact value, plus the fp32 sum-order error (K * 2^-24 * |terms|)
        order = k * 2**-22 * (x.float().abs() @ weight.float().abs().T)
        assert ((out.float() - exact).abs() <= ROUNDING[dtype] * exact.abs() + order + 1e-6).all()


def test_gemv_takes_a_row_view_of_a_wider_weight():
    """The fused QKV weight's parameters are row views of one tensor: any row stride works."""
    fused = randn(30, 64, dtype=torch.float32, seed=3)
    x = randn(1, 64, dtype=torch.float32, seed=4)
    torch.testing.assert_close(gemv(x, fused[10:20]), fp32_product(x, fused[10:20], None))
    wide = randn(12, 100, dtype=torch.float32, seed=5)[:, :64]  # rows contiguous, stride 100
    torch.testing.assert_close(gemv(x, wide), fp32_product(x, wide, None))


@pytest.mark.parametrize(
    "n, k, tiles",
    [
        (2048, 1536, GemvTiles(4, 2048, 8, prefetch=1)),  # 1.5B QKV: the whole row, prefetched
        (1536, 1536, GemvTiles(2, 2048, 8, prefetch=1)),  # 1.5B output projection
        (8960, 1536, GemvTiles(1, 512, 4)),  # 1.5B gate/up halves (gemv_silu_mul)
        (17920, 1536, GemvTiles(4, 1024, 4)),  # 1.5B plain gate/up
        (151936, 1536, GemvTiles(4, 1024, 4)),  # 1.5B LM head
        (1536, 8960, GemvTiles(8, 2048, 8)),  # 1.5B down
        (4096, 14336, GemvTiles(1, 1024, 4)),  # 8B down: prefetched (27.8 against 32.5 us)
        (6144, 4096, GemvTiles(1, 1024, 8, prefetch=0)),  # 8B QKV: rows of 4096, no prefetch
        (4096, 4096, GemvTiles(1, 1024, 8, prefetch=0)),  # 8B output projection
        (14336, 4096, GemvTiles(1, 1024, 8, prefetch=0)),  # 8B gate/up halves (gemv_silu_mul)
        (128256, 4096, GemvTiles(1, 1024, 8, prefetch=0)),  # 8B LM head
        (960, 576, GemvTiles(2, 1024, 8, prefetch=1)),  # SmolLM2 QKV: one masked tile
        (64, 100, GemvTiles(2, 128, 8, prefetch=1)),
    ],
)
def test_choose_tiles_follows_the_sweep(n, k, tiles):
    assert choose_tiles(n, k) == tiles


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, dtype, match",
    [
        ((2, 64), (8, 64), None, torch.float32, "one contiguous row"),
        ((64,), (8, 64), None, torch.float32, "one contiguous row"),
        ((1, 64), (8, 65), None, torch.float32, r"must be \[N, 64\]"),
        ((1, 64), (8, 64), (7,), torch.float32, r"bias must be \[N\] = \[8\]"),
        ((1, 64), (8, 64), None, torch.float16, "share a dtype"),
    ],
)
def test_gemv_rejects_what_it_cannot_compute(x_shape, w_shape, b_shape, dtype, match):
    x = torch.zeros(x_shape, device=DEVICE)
    weight = torch.zeros(w_shape, device=DEVICE, dtype=dtype)
    bias = None if b_shape is None else torch.zeros(b_shape, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        gemv(x, weight, bias)


def test_gemv_refuses_a_strided_bias_and_linear_leaves_it_to_pytorch():
    """The kernel reads ``bias[row]`` at unit stride: a strided bias would read the wrong values."""
    x = randn(1, 64, dtype=torch.float32, seed=17)
    weight = randn(8, 64, dtype=torch.float32, seed=18)
    strided = randn(16, dtype=torch.float32, seed=19)[::2]
    with pytest.raises(ValueError, match="bias must be contiguous"):
        gemv(x, weight, strided)
    assert torch.equal(linear(x, weight, strided), F.linear(x, weight, strided))
    torch.testing.assert_close(gemv(x, weight, strided.contiguous()), fp32_product(x, weight, strided))


def test_gemv_refuses_a_weight_its_32_bit_offsets_cannot_address():
    """The offsets are ``row * row_stride + column``: what counts is the last element's offset, so
    a row view of a wider tensor counts its stride (a meta tensor: no memory behind it)."""
    spread = torch.empty(2, 64, device="meta").as_strided((2, 64), (2**31, 1))
    with pytest.raises(ValueError, match="spanning 2147483712 elements needs 64-bit offsets"):
        gemv(torch.zeros(1, 64), spread)
    repeated = torch.zeros(1, 64).expand(2**31 // 64, 64)  # 2^31 elements, all at offsets < 64
    assert weight_refusal(torch.zeros(1, 64), repeated, None) is None


@pytest.mark.parametrize("field", ["block_n", "block_k", "warps"])
@pytest.mark.parametrize("value", [0, 3, -4])
def test_tiles_must_be_powers_of_two(field, value):
    values = {"block_n": 1, "block_k": 64, "warps": 4, field: value}
    with pytest.raises(ValueError, match=f"GemvTiles.{field}"):
        GemvTiles(**values)


@pytest.mark.parametrize("prefetch", [-1, 3])
def test_tiles_prefetch_at_most_two_tiles(prefetch):
    with pytest.raises(ValueError, match=r"GemvTiles\.prefetch"):
        GemvTiles(1, 64, 4, prefetch=prefetch)


@pytest.mark.parametrize("k", [40, 64, 100, 200])  # one partial tile, one, two, four tiles of 64
@pytest.mark.parametrize("fused_silu", [False, True])
def test_prefetched_tiles_sum_in_the_same_order(k, fused_silu):
    """Loading the first tiles before the PDL wait changes when they load, not the sum: every
    ``prefetch`` gives the same bits (bias included)."""
    x = randn(1, k, dtype=torch.bfloat16, seed=9)
    weight = randn(24, k, dtype=torch.bfloat16, seed=10)
    bias = randn(24, dtype=torch.bfloat16, seed=11)
    outs = [
        gemv_silu_mul(x, weight, tiles) if fused_silu else gemv(x, weight, bias, tiles)
        for tiles in (GemvTiles(2, 64, 4, prefetch=p) for p in (0, 1, 2))
    ]
    assert all(torch.equal(out, outs[0]) for out in outs[1:])


def test_linear_is_pytorch_for_several_rows_and_off_cuda():
    x = randn(3, 64, dtype=torch.float32, seed=6)
    weight = randn(16, 64, dtype=torch.float32, seed=7)
    bias = randn(16, dtype=torch.float32, seed=8)
    assert torch.equal(linear(x, weight, bias), F.linear(x, weight, bias))
    x, weight, bias = x.cpu(), weight.cpu(), bias.cpu()
    assert torch.equal(linear(x[:1], weight, bias), F.linear(x[:1], weight, bias))


@pytest.mark.gpu
def test_linear_and_gate_up_silu_mul_run_one_cuda_row_through_the_gemv():
    x = randn(1, 1536, dtype=torch.bfloat16, seed=9)
    weight = randn(2048, 1536, dtype=torch.bfloat16, seed=10)
    bias = randn(2048, dtype=torch.bfloat16, seed=11)
    assert torch.equal(linear(x, weight, bias), gemv(x, weight, bias))
    rows = randn(17, 1536, dtype=torch.bfloat16, seed=12)  # past the skinny GEMM's 16 rows
    assert torch.equal(linear(rows, weight, bias), F.linear(rows, weight, bias))
    assert torch.equal(gate_up_silu_mul(x, weight), gemv_silu_mul(x, weight))
    assert torch.equal(gate_up_silu_mul(rows, weight), silu_mul(F.linear(rows, weight)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("width, k", [(40, 96), (17, 1100), (300, 64)])
@pytest.mark.parametrize("tiles", [GemvTiles(1, 1024, 4), GemvTiles(4, 64, 4), GemvTiles(8, 32, 1)], ids=str)
def test_gemv_silu_mul_is_gemv_then_silu_mul_bit_for_bit(dtype, width, k, tiles):
    """Same tiles, same sums: the fused epilogue rounds the projection, then SiLU-mul rounds."""
    x = randn(1, k, dtype=dtype, seed=13)
    gate_up = randn(2 * width, k, dtype=dtype, seed=14)
    want = silu_mul(gemv(x, gate_up, None, tiles))
    got = gemv_silu_mul(x, gate_up, tiles)
    assert got.shape == (1, width) and torch.equal(got, want)


def test_gemv_silu_mul_needs_gate_and_up_halves():
    with pytest.raises(ValueError, match="gate and up halves"):
        gemv_silu_mul(torch.zeros(1, 8, device=DEVICE), torch.zeros(5, 8, device=DEVICE))


def test_gate_up_silu_mul_off_cuda_is_the_pytorch_mlp():
    x = randn(3, 64, dtype=torch.float32, seed=15).cpu()
    gate_up = randn(32, 64, dtype=torch.float32, seed=16).cpu()
    for rows in (x, x[:1]):
        gate, up = F.linear(rows, gate_up).chunk(2, dim=-1)
        assert torch.equal(gate_up_silu_mul(rows, gate_up), F.silu(gate) * up)
