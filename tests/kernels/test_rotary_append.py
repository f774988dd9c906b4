"""The fused decode RoPE + K/V append against its two-kernel reference (``rotary_qk``, then
``append_decode_kv`` of the rotated keys), each of which has its own PyTorch reference, and
against the plain PyTorch path (``apply_rotary``, then ``KVCache.write``).

Runs on CUDA when present, else on CPU through Triton's interpreter; skipped without Triton. The
fused kernel performs the two kernels' roundings in the same order, so q and every cache tensor
must equal theirs bit for bit; against PyTorch's RoPE, within ``rotary_qk``'s tolerance.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels.fused_layers import rotary_qk
from lil_sparse.kernels.kv_append import append_decode_kv
from lil_sparse.kernels.rotary_append import rotary_append_decode_kv
from lil_sparse.kv import KVCache
from lil_sparse.models.rope import apply_rotary, rotary_cos_sin
from tests.kernels.test_fused_layers import TOL
from tests.kernels.test_kv_append import PAGE_SIZE, assert_same_cache, filled_cache, metadata

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def layer_inputs(dtype: torch.dtype, tokens: int, q_heads: int, k_heads: int, head_dim: int, seed: int):
    """A fused QKV output's q/k slice and v view, angles for spread-out positions, and slots on
    distinct pages (as a decode step writes)."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (q_heads + 2 * k_heads) * head_dim, generator=gen).to(dtype).to(DEVICE)
    qk = qkv[:, : (q_heads + k_heads) * head_dim].view(tokens, q_heads + k_heads, head_dim)
    v = qkv[:, (q_heads + k_heads) * head_dim :].view(tokens, k_heads, head_dim)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    positions = torch.randint(0, 8000, (tokens,), generator=gen)
    cos, sin = rotary_cos_sin(positions.to(DEVICE), inv_freq.to(DEVICE))
    pages = torch.randperm(40, generator=gen)[: tokens * k_heads].view(tokens, k_heads)
    slots = (pages * PAGE_SIZE + torch.randint(0, PAGE_SIZE, pages.shape, generator=gen)).to(DEVICE)
    return qk, v, cos, sin, slots


def append_args(kv: KVCache, layer: int, update: bool):
    return kv.k[layer], kv.v[layer], metadata(kv, layer) if update else None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("update", [True, False])
@pytest.mark.parametrize(
    ("tokens", "q_heads", "k_heads", "head_dim"),
    # SmolLM2: 9/3 x 64; 6 + 2 heads fill the head block exactly (no masked rows)
    [(5, 4, 2, 16), (3, 9, 3, 64), (2, 12, 2, 64), (1, 4, 1, 32), (2, 6, 2, 32)],
)
# 16: one program per token for these; 4 and 2: head blocks of query heads, of key heads, of
# both and partial ones (9 + 3 heads in blocks of 4 and 2).
@pytest.mark.parametrize("block_heads", [16, 4, 2])
def test_fused_rotary_append_equals_rotary_then_append(
    dtype, update, tokens, q_heads, k_heads, head_dim, block_heads
):
    qk, v, cos, sin, slots = layer_inputs(dtype, tokens, q_heads, k_heads, head_dim, seed=head_dim + tokens)
    want = filled_cache(dtype, head_dim, seed=3)
    got = filled_cache(dtype, head_dim, seed=3)
    want_q, k = rotary_qk(qk, q_heads, cos, sin)
    append_decode_kv(*append_args(want, 1, update), slots, k, v)
    q = rotary_append_decode_kv(
        qk, q_heads, cos, sin, v, *append_args(got, 1, update), slots, block_heads=block_heads
    )
    assert q.is_contiguous() and q.shape == (tokens, q_heads, head_dim)
    assert torch.equal(q, want_q)
    for name in ("k", "v", "key_bounds", "key_sum", "key_mean"):  # the same kernel code: equal
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    # What landed in the slots is the rotated keys and the values, and nothing else moved.
    written = got.k[1].view(-1, head_dim)[slots.view(-1)]
    assert torch.equal(written, k.reshape(-1, head_dim))
    assert torch.equal(got.v[1].view(-1, head_dim)[slots.view(-1)], v.reshape(-1, head_dim))
    assert torch.equal(got.k[0], filled_cache(dtype, head_dim, seed=3).k[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_rotary_append_matches_the_pytorch_path(dtype):
    qk, v, cos, sin, slots = layer_inputs(dtype, 3, 9, 3, 64, seed=7)
    want = filled_cache(dtype, 64, seed=4)
    got = filled_cache(dtype, 64, seed=4)
    want_q = apply_rotary(qk[:, :9], cos, sin)
    want.write(1, slots, apply_rotary(qk[:, 9:], cos, sin), v, distinct_pages=False)
    q = rotary_append_decode_kv(qk, 9, cos, sin, v, *append_args(got, 1, True), slots)
    torch.testing.assert_close(q, want_q, **TOL[dtype])
    for name in ("k", "key_bounds", "key_sum", "key_mean"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), **TOL[dtype])
    assert torch.equal(got.v, want.v)  # values are copied, not rotated


@pytest.mark.parametrize("update", [True, False])
def test_kv_cache_write_rotated_equals_rotary_then_the_reference_write(update):
    # KVCache.write_rotated takes the one kernel on CUDA and rotary_qk + write elsewhere: either
    # way q and the cache equal RoPE followed by write's PyTorch path, bit for bit.
    qk, v, cos, sin, slots = layer_inputs(torch.bfloat16, 3, 9, 3, 64, seed=11)
    want = filled_cache(torch.bfloat16, 64, seed=5)
    got = filled_cache(torch.bfloat16, 64, seed=5)
    want_q, k = rotary_qk(qk, 9, cos, sin)
    want.write(1, slots, k, v, distinct_pages=False, update_metadata=update)
    q = got.write_rotated(1, slots, qk, 9, cos, sin, v, update_metadata=update)
    assert torch.equal(q, want_q)
    assert_same_cache(got, want)


def test_bad_layouts_are_refused():
    qk, v, cos, sin, slots = layer_inputs(torch.float32, 2, 4, 2, 16, seed=1)
    kv = filled_cache(torch.float32, 16, seed=2)
    with pytest.raises(ValueError, match="key_sum must be float32"):
        bad_sum = metadata(kv, 0)._replace(key_sum=kv.key_sum[0].half())
        rotary_append_decode_kv(qk, 4, cos, sin, v, kv.k[0], kv.v[0], bad_sum, slots)
    with pytest.raises(ValueError, match="slots"):
        rotary_append_decode_kv(qk, 4, cos, sin, v, kv.k[0], kv.v[0], None, slots[:1])
    with pytest.raises(ValueError, match="slots"):
        rotary_append_decode_kv(qk, 3, cos, sin, v, kv.k[0], kv.v[0], None, slots)
    strided_heads = torch.randn(2, 6, 32, device=DEVICE)[:, :, :16]
    with pytest.raises(ValueError, match="contiguous heads"):
        rotary_append_decode_kv(strided_heads, 4, cos, sin, v, kv.k[0], kv.v[0], None, slots)
    with pytest.raises(ValueError, match="block_heads must be a power of two"):
        rotary_append_decode_kv(qk, 4, cos, sin, v, kv.k[0], kv.v[0], None, slots, block_heads=6)
