"""The fused decode K/V append against ``KVCache.write``'s PyTorch path (its reference).

Runs on CUDA when present, else on CPU through Triton's interpreter; skipped without Triton. Both
write the same values and compute min, max, an fp32 add and one scaling per element, so the caches
must be equal bit for bit; except that Triton's CPU interpreter rounds fp32 to bf16 and fp16 by
truncation, so there the rounded key mean may sit one ulp off (:func:`assert_same_cache`).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels.kv_append import append_decode_kv
from lil_sparse.kv import KVCache
from lil_sparse.kv.key_metadata import KeyMetadata

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PAGE_SIZE = 16


def filled_cache(dtype: torch.dtype, head_dim: int, seed: int) -> KVCache:
    gen = torch.Generator().manual_seed(seed)
    kv = KVCache(2, 40, PAGE_SIZE, head_dim, dtype, torch.device(DEVICE))
    tokens = torch.randn(2, 41, 1, PAGE_SIZE, head_dim, generator=gen).to(dtype)
    kv.k.copy_(tokens.to(DEVICE))
    kv.v.copy_((tokens * 2).to(DEVICE))
    kv.key_bounds[:, :30, 0] = torch.randn(2, 30, head_dim, generator=gen).to(dtype).to(DEVICE) - 1
    kv.key_bounds[:, :30, 1] = torch.randn(2, 30, head_dim, generator=gen).to(dtype).to(DEVICE) + 1
    kv.key_sum.normal_(generator=torch.Generator(DEVICE).manual_seed(seed))
    kv.key_mean.copy_(kv.key_sum * (1.0 / PAGE_SIZE))
    return kv


def metadata(kv: KVCache, layer: int) -> KeyMetadata:
    return KeyMetadata(kv.key_bounds[layer], kv.key_sum[layer], kv.key_mean[layer])


def assert_same_cache(
    got: KVCache, want: KVCache, names=("k", "v", "key_bounds", "key_sum", "key_mean")
) -> None:
    """Bit for bit, but for the rounded key mean where Triton's interpreter truncates (one ulp)."""
    for name in names:
        a, b = getattr(got, name), getattr(want, name)
        if name == "key_mean" and DEVICE == "cpu" and a.dtype != torch.float32:
            ulp = torch.finfo(a.dtype).eps * b.float().abs()  # eps: the ulp at 1
            assert ((a.float() - b.float()).abs() <= ulp).all(), name
        else:
            assert torch.equal(a, b), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("update", [True, False])
@pytest.mark.parametrize("head_dim", [16, 64])
def test_fused_append_equals_the_reference_write(dtype, update, head_dim):
    gen = torch.Generator().manual_seed(head_dim)
    tokens, heads = 5, 3
    pages = torch.randperm(40, generator=gen)[: tokens * heads].view(tokens, heads)  # distinct pages
    slots = (pages * PAGE_SIZE + torch.randint(0, PAGE_SIZE, pages.shape, generator=gen)).to(DEVICE)
    # Keys as the model hands them: a strided view of a fused projection, in the model dtype.
    fused = torch.randn(tokens, heads, 2 * head_dim, generator=gen).to(dtype).to(DEVICE)
    k, v = fused[..., :head_dim], fused[..., head_dim:]
    want = filled_cache(dtype, head_dim, seed=1)
    got = filled_cache(dtype, head_dim, seed=1)
    want.write(1, slots, k, v, distinct_pages=False, update_metadata=update)  # the PyTorch path
    append_decode_kv(got.k[1], got.v[1], metadata(got, 1) if update else None, slots, k, v)
    assert_same_cache(got, want)
    written = got.k[1].view(-1, head_dim)[slots.view(-1)]
    assert torch.equal(written, k.reshape(-1, head_dim))


def test_bad_layouts_are_refused():
    kv = filled_cache(torch.float32, 16, seed=2)
    k = torch.randn(2, 1, 16, device=DEVICE)
    slots = torch.tensor([[3], [40]], device=DEVICE)
    with pytest.raises(ValueError, match="key_sum must be float32"):
        bad_sum = KeyMetadata(kv.key_bounds[0], kv.key_sum[0].half(), kv.key_mean[0])
        append_decode_kv(kv.k[0], kv.v[0], bad_sum, slots, k, k)
    with pytest.raises(ValueError, match="key_mean"):
        append_decode_kv(
            kv.k[0], kv.v[0], KeyMetadata(kv.key_bounds[0], kv.key_sum[0], kv.key_mean[0, :3]), slots, k, k
        )
    with pytest.raises(ValueError, match="contiguous"):
        strided = KeyMetadata(kv.key_bounds[0], kv.key_sum[0], kv.key_mean[0].t().contiguous().t())
        append_decode_kv(kv.k[0], kv.v[0], strided, slots, k, k)
    with pytest.raises(ValueError, match="slots"):
        append_decode_kv(kv.k[0], kv.v[0], None, slots[:1], k, k)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_reference_write_keeps_the_mean_the_rounded_scaled_sum(dtype):
    """A prefill-style write (many tokens per page), then resetting a page: the mean is always
    ``key_sum * (1 / page_size)`` rounded to the cache dtype, and a reset page holds zeros."""
    kv = KVCache(2, 6, PAGE_SIZE, 32, dtype, torch.device(DEVICE))
    gen = torch.Generator().manual_seed(5)
    slots = torch.arange(40).view(40, 1).to(DEVICE)  # pages 0-1 full, page 2 half full
    k = torch.randn(40, 1, 32, generator=gen).to(dtype).to(DEVICE)
    kv.write(1, slots, k, k)
    full_mean = k[:16, 0].float().sum(0) / PAGE_SIZE
    torch.testing.assert_close(kv.key_mean[1, 0].float(), full_mean, rtol=2**-7, atol=1e-6)
    assert torch.equal(kv.key_mean[1], (kv.key_sum[1] * (1.0 / PAGE_SIZE)).to(dtype))
    kv.reset_pages(torch.tensor([1], device=DEVICE))
    assert not kv.key_mean[:, 1].any() and not kv.key_sum[:, 1].any()
    assert kv.key_mean[1, 0].any()
