"""The QKV GEMV with RoPE and the K/V append in its epilogue
(:func:`lil_sparse.kernels.gemv.gemv_rmsnorm_rope_append`) against :func:`gemv_rmsnorm` with the
same tiles followed by :func:`rotary_append_decode_kv` without metadata: bit for bit (each row's
dot product sums in the same order whichever rows share its program). On CPU in Triton's
interpreter; tests/kernels runs on the H200 too."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels.gemv import RopeAppend, gemv_rmsnorm, gemv_rmsnorm_rope_append
from lil_sparse.kernels.gemv_tiles import GemvTiles
from lil_sparse.kernels.rotary_append import rotary_append_decode_kv
from lil_sparse.models.rope import rotary_cos_sin

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-6
PAGES, PAGE_SIZE = 6, 4


def randn(*shape, dtype=torch.bfloat16, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


def caches(head_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        randn(PAGES, 1, PAGE_SIZE, head_dim, seed=seed),
        randn(PAGES, 1, PAGE_SIZE, head_dim, seed=seed + 1),
    )


@pytest.mark.parametrize("q_heads, k_heads, head_dim", [(4, 2, 16), (3, 1, 64), (6, 2, 32)])
@pytest.mark.parametrize("block_n", [2, 4])
@pytest.mark.parametrize("has_residual, has_bias", [(True, True), (False, False)])
def test_epilogue_equals_the_gemv_then_rotary_append(
    q_heads, k_heads, head_dim, block_n, has_residual, has_bias
):
    hidden = 48
    rows = (q_heads + 2 * k_heads) * head_dim
    x = randn(1, hidden, seed=0)
    residual = randn(1, hidden, seed=1) if has_residual else None
    norm_weight = randn(hidden, seed=2)
    weight = randn(rows, hidden, seed=3)
    bias = randn(rows, seed=4) if has_bias else None
    tiles = GemvTiles(block_n, 64, 4)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    cos, sin = rotary_cos_sin(torch.tensor([37], device=DEVICE), inv_freq.to(DEVICE))
    # Key head h's new entry: page (2h + 1), offset 2 (distinct pages, as the engine's slots are).
    slots = torch.tensor([[(2 * h + 1) * PAGE_SIZE + 2 for h in range(k_heads)]], device=DEVICE)
    k_want, v_want = caches(head_dim, seed=5)
    k_got, v_got = k_want.clone(), v_want.clone()

    qkv, want_residual = gemv_rmsnorm(x, residual, norm_weight, EPS, weight, bias, tiles)
    heads = qkv.view(1, q_heads + 2 * k_heads, head_dim)
    q_want = rotary_append_decode_kv(
        heads[:, : q_heads + k_heads],
        q_heads,
        cos,
        sin,
        heads[:, q_heads + k_heads :],
        k_want,
        v_want,
        None,
        slots,
    )
    rope = RopeAppend(cos, sin, slots, k_got, v_got, q_heads, k_heads)
    q_got, got_residual = gemv_rmsnorm_rope_append(x, residual, norm_weight, EPS, weight, bias, rope, tiles)

    assert q_got.shape == (1, q_heads, head_dim) and q_got.dtype == torch.bfloat16
    assert torch.equal(q_got, q_want)
    assert torch.equal(k_got, k_want) and torch.equal(v_got, v_want)
    assert torch.equal(got_residual, want_residual)
    # The append wrote the new entries and nothing else: every other slot kept its bits.
    for h in range(k_heads):
        page = 2 * h + 1
        assert torch.equal(v_got[page, 0, 2], heads[0, q_heads + k_heads + h])
    written = torch.zeros(PAGES, 1, PAGE_SIZE, dtype=torch.bool)
    written[[2 * h + 1 for h in range(k_heads)], 0, 2] = True
    untouched = caches(head_dim, seed=5)
    assert torch.equal(k_got[~written.to(DEVICE)], untouched[0][~written.to(DEVICE)])


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda r: r._replace(q_heads=5), "heads"),  # the weight's rows are not the heads
        (lambda r: r._replace(cos=r.cos.double()), "cos"),
        (lambda r: r._replace(slots=r.slots.int()), "slots"),
        (lambda r: r._replace(v_cache=r.v_cache[:3]), "caches"),
        (lambda r: r._replace(k_cache=r.k_cache.float(), v_cache=r.v_cache.float()), "x.s"),
    ],
)
def test_refuses_what_it_cannot_pair_or_place(change, match):
    x, norm_weight = randn(1, 48, seed=0), randn(48, seed=2)
    weight = randn(8 * 16, 48, seed=3)
    k_cache, v_cache = caches(16, seed=5)
    cos = torch.zeros(1, 8, device=DEVICE)
    rope = RopeAppend(cos, cos.clone(), torch.tensor([[1, 5]], device=DEVICE), k_cache, v_cache, 4, 2)
    with pytest.raises(ValueError, match=match):
        gemv_rmsnorm_rope_append(x, None, norm_weight, EPS, weight, None, change(rope), GemvTiles(2, 64, 4))


def test_refuses_tiles_that_cannot_pair_dims():
    x, norm_weight = randn(1, 48, seed=0), randn(48, seed=2)
    weight = randn(8 * 16, 48, seed=3)
    k_cache, v_cache = caches(16, seed=5)
    cos = torch.zeros(1, 8, device=DEVICE)
    rope = RopeAppend(cos, cos.clone(), torch.tensor([[1, 5]], device=DEVICE), k_cache, v_cache, 4, 2)
    with pytest.raises(ValueError, match="pair"):
        gemv_rmsnorm_rope_append(x, None, norm_weight, EPS, weight, None, rope, GemvTiles(1, 64, 4))
