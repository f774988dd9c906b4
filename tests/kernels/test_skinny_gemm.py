"""The few-token GEMM (:mod:`lil_sparse.kernels.skinny_gemm`) against the fp32 product it rounds,
and the dispatch of :mod:`lil_sparse.kernels.linear` to it.

As for the GEMV (tests/kernels/test_gemv.py): ``F.linear`` in bf16/fp16 and the kernel both sum
in fp32 and round once, so each output must sit within one rounding of the fp32 product (bf16:
2^-8 relative on the GPU; Triton's CPU interpreter rounds by truncation, a full ulp, 2^-7).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from lil_sparse.kernels.fused_layers import add_rmsnorm, silu_mul
from lil_sparse.kernels.linear import gate_up_silu_mul, linear, rmsnorm_linear
from lil_sparse.kernels.skinny_gemm import (
    MAX_ROWS,
    PAYING_ROWS,
    SkinnyTiles,
    choose_skinny_silu_tiles,
    choose_skinny_tiles,
    skinny_linear,
    skinny_pays,
    skinny_refusal,
    skinny_silu_mul,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROUNDING = {
    torch.bfloat16: 2**-8 if DEVICE == "cuda" else 2**-7,
    torch.float16: 2**-10 if DEVICE == "cuda" else 2**-9,
}
TILES = [None, SkinnyTiles(block_n=16, block_k=32, warps=4, stages=2), SkinnyTiles(32, 16, 1, 1)]


def randn(*shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def within_one_rounding(out, x, weight, bias, dtype):
    exact = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    order = x.shape[1] * 2**-22 * (x.float().abs() @ weight.float().abs().T)  # fp32 sum order
    return ((out.float() - exact).abs() <= ROUNDING[dtype] * exact.abs() + order + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [2, 5, 16, 17, MAX_ROWS])
@pytest.mark.parametrize("n, k", [(40, 96), (33, 200), (17, 70)])
@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("tiles", TILES, ids=["chosen", "16x32", "32x16"])
def test_skinny_linear_is_the_fp32_product_rounded_once(dtype, rows, n, k, has_bias, tiles):
    x = randn(rows, k, dtype=dtype, seed=0)
    weight = randn(n, k, dtype=dtype, seed=1)
    bias = randn(n, dtype=dtype, seed=2) if has_bias else None
    out = skinny_linear(x, weight, bias, tiles)
    assert out.shape == (rows, n) and out.dtype == dtype and out.is_contiguous()
    assert within_one_rounding(out, x, weight, bias, dtype)


def test_skinny_linear_takes_row_views():
    """A fused QKV weight's parameters are row views of one tensor, and hidden states may be a
    column slice of a wider buffer: any row stride works, for the weight and for x."""
    weight = randn(24, 96, dtype=torch.bfloat16, seed=3)[:, 16:80]
    x = randn(4, 96, dtype=torch.bfloat16, seed=4)[:, 8:72]
    assert weight.stride(0) == 96 and x.stride(0) == 96 and weight.shape == (24, 64)
    out = skinny_linear(x, weight)
    assert within_one_rounding(out, x, weight, None, torch.bfloat16)
    assert torch.equal(out, skinny_linear(x.contiguous(), weight.contiguous()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "rows, width, k",
    [(2, 40, 96), (7, 17, 130), (16, 33, 64), (17, 33, 130), (23, 17, 70), (MAX_ROWS, 33, 64)],
)
@pytest.mark.parametrize("tiles", [None, SkinnyTiles(16, 32, 4, 2)], ids=["chosen", "16x32"])
def test_skinny_silu_mul_is_skinny_linear_then_silu_mul_bit_for_bit(dtype, rows, width, k, tiles):
    """Same tiles, same sums: the epilogue rounds the projection, then SiLU-mul rounds."""
    x = randn(rows, k, dtype=dtype, seed=5)
    gate_up = randn(2 * width, k, dtype=dtype, seed=6)
    linear_tiles = tiles or choose_skinny_silu_tiles(k)
    want = silu_mul(skinny_linear(x, gate_up, None, linear_tiles))
    got = skinny_silu_mul(x, gate_up, tiles)
    assert got.shape == (rows, width) and torch.equal(got, want)


@pytest.mark.parametrize("rows", [3, 20])
def test_skinny_silu_mul_is_the_pytorch_mlp_within_its_roundings(rows):
    """Against ``F.silu(gate) * up`` of the fp32 product rounded once to bf16: the kernel may
    differ by the product's sum order (one rounding of gate or up), then SiLU and the product
    round once each."""
    x = randn(rows, 96, dtype=torch.bfloat16, seed=20)
    gate_up = randn(2 * 24, 96, dtype=torch.bfloat16, seed=21) / 96**0.5
    gate, up = F.linear(x.float(), gate_up.float()).to(torch.bfloat16).chunk(2, dim=-1)
    want = (F.silu(gate) * up).float()
    got = skinny_silu_mul(x, gate_up).float()
    assert ((got - want).abs() <= 4 * ROUNDING[torch.bfloat16] * (want.abs() + 1)).all()


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, dtype, match",
    [
        ((1, 8), (4, 8), None, torch.bfloat16, "2 to 32 rows"),
        ((MAX_ROWS + 1, 8), (4, 8), None, torch.bfloat16, "2 to 32 rows"),
        ((2, 8), (4, 9), None, torch.bfloat16, r"must be \[N, 8\]"),
        ((2, 8), (4, 8), None, torch.float32, "bfloat16 or float16"),
        ((2, 8), (4, 8), (5,), torch.bfloat16, r"bias must be \[N\] = \[4\]"),
        ((2, 2, 8), (4, 8), None, torch.bfloat16, "2 to 32 rows"),
    ],
)
def test_skinny_linear_rejects_what_it_cannot_compute(x_shape, w_shape, b_shape, dtype, match):
    x, weight = torch.zeros(x_shape, dtype=dtype), torch.zeros(w_shape, dtype=dtype)
    bias = None if b_shape is None else torch.zeros(b_shape, dtype=dtype)
    assert skinny_refusal(x, weight, bias) is not None
    with pytest.raises(ValueError, match=match):
        skinny_linear(x, weight, bias)


def test_skinny_linear_refuses_strided_columns_a_strided_bias_and_mixed_dtypes():
    x = randn(4, 32, dtype=torch.bfloat16, seed=22)
    weight = randn(8, 16, dtype=torch.bfloat16, seed=23)
    with pytest.raises(ValueError, match="contiguous columns"):
        skinny_linear(x[:, ::2], weight)
    with pytest.raises(ValueError, match="bias must be contiguous"):
        skinny_linear(x[:, :16], weight, randn(16, dtype=torch.bfloat16, seed=24)[::2])
    with pytest.raises(ValueError, match=r"x torch\.bfloat16, weight torch\.float16"):
        skinny_linear(x[:, :16], weight.half())
    with pytest.raises(ValueError, match=r"^skinny_silu_mul: "):
        skinny_silu_mul(x[:, ::2], randn(8, 16, dtype=torch.bfloat16, seed=25))


def test_skinny_silu_mul_needs_gate_and_up_halves():
    with pytest.raises(ValueError, match="gate and up halves"):
        skinny_silu_mul(torch.zeros(2, 16, dtype=torch.bfloat16), torch.zeros(5, 16, dtype=torch.bfloat16))


@pytest.mark.parametrize("field, value", [("block_n", 8), ("block_k", 48), ("warps", 3), ("stages", 0)])
def test_tiles_are_validated(field, value):
    fields = {"block_n": 16, "block_k": 16, "warps": 4, "stages": 2} | {field: value}
    with pytest.raises(ValueError, match=field):
        SkinnyTiles(**fields)


def test_chosen_tiles_follow_the_sweep():
    assert choose_skinny_tiles(14336) == SkinnyTiles(64, 256, 4, 5)
    assert choose_skinny_tiles(14336, rows=32) == SkinnyTiles(64, 256, 4, 4)  # shared memory
    assert choose_skinny_silu_tiles(4096) == SkinnyTiles(64, 128, 4, 5)
    assert choose_skinny_tiles(96).block_k == 128  # never past the row's next power of two


@pytest.mark.parametrize(
    "n, k, pays",
    [(6144, 4096, True), (4096, 4096, True), (4096, 14336, True), (14336, 4096, True), (128256, 4096, True),
     (2048, 1536, True), (1536, 1536, True), (1536, 8960, False), (8960, 1536, False), (151936, 1536, False),
     (960, 576, False), (576, 576, False), (1536, 576, False), (576, 1536, False), (1152, 896, False)],
)  # fmt: skip
def test_skinny_pays_where_the_sweep_saw_it_win(n, k, pays):
    """The 8B and 1.5B shapes as measured at 8 to 32 rows; SmolLM2-135M's (host-bound steps,
    end to end unmeasured) and Qwen2.5-0.5B's (unmeasured) weights stay with cuBLAS."""
    for rows in (2, 8, 16, 17, 24, PAYING_ROWS):
        assert skinny_pays(n, k, rows) is pays


def test_skinny_pays_for_every_row_count_the_kernel_takes():
    """17-32 rows (padded to 32) were measured too: PAYING_ROWS is all the kernel takes."""
    assert PAYING_ROWS == MAX_ROWS


@pytest.mark.parametrize("rows", [0, 1, PAYING_ROWS + 1, 64])
def test_skinny_pays_only_for_the_rows_it_was_measured_at(rows):
    assert not skinny_pays(4096, 4096, rows)


def test_dispatch_leaves_cpu_and_fp32_rows_to_pytorch():
    x = randn(3, 64, dtype=torch.float32, seed=7)
    weight = randn(16, 64, dtype=torch.float32, seed=8)
    assert torch.equal(linear(x, weight), F.linear(x, weight))
    xb, wb = x.cpu().bfloat16(), weight.cpu().bfloat16()
    assert torch.equal(linear(xb, wb), F.linear(xb, wb))
    gate, up = F.linear(xb, wb).chunk(2, dim=-1)
    assert torch.equal(gate_up_silu_mul(xb, wb), F.silu(gate) * up)


@pytest.mark.gpu
def test_dispatch_runs_few_cuda_rows_through_the_skinny_gemm_where_it_pays():
    rows = randn(4, 1536, dtype=torch.bfloat16, seed=9)
    weight = randn(2048, 1536, dtype=torch.bfloat16, seed=10)
    bias = randn(2048, dtype=torch.bfloat16, seed=11)
    assert torch.equal(linear(rows, weight, bias), skinny_linear(rows, weight, bias))
    gate_up = randn(4096, 1536, dtype=torch.bfloat16, seed=12)  # 2048 gate rows: pays
    assert torch.equal(gate_up_silu_mul(rows, gate_up), skinny_silu_mul(rows, gate_up))
    down = randn(1536, 8960, dtype=torch.bfloat16, seed=13)  # the 1.5B down projection: cuBLAS
    wide = randn(4, 8960, dtype=torch.bfloat16, seed=14)
    assert torch.equal(linear(wide, down), F.linear(wide, down))
    many = randn(PAYING_ROWS + 1, 1536, dtype=torch.bfloat16, seed=15)
    assert torch.equal(linear(many, weight, bias), F.linear(many, weight, bias))
    norm = randn(1536, dtype=torch.bfloat16, seed=16)
    residual = randn(4, 1536, dtype=torch.bfloat16, seed=17)
    out, _ = rmsnorm_linear(rows, residual.clone(), norm, 1e-6, weight, bias)
    assert torch.equal(out, skinny_linear(add_rmsnorm(rows, residual.clone(), norm, 1e-6), weight, bias))
