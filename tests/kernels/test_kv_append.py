"""The fused decode K/V append against ``KVCache.write``'s PyTorch path (its reference).

Runs on CUDA when present, else on CPU through Triton's interpreter; skipped without Triton. Both
write the same values and compute min, max and an fp32 add per element, so the caches must be
equal bit for bit.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels.kv_append import append_decode_kv
from lil_sparse.kv import KVCache

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
    return kv


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("metadata", [True, False])
@pytest.mark.parametrize("head_dim", [16, 64])
def test_fused_append_equals_the_reference_write(dtype, metadata, head_dim):
    gen = torch.Generator().manual_seed(head_dim)
    tokens, heads = 5, 3
    pages = torch.randperm(40, generator=gen)[: tokens * heads].view(tokens, heads)  # distinct pages
    slots = (pages * PAGE_SIZE + torch.randint(0, PAGE_SIZE, pages.shape, generator=gen)).to(DEVICE)
    # Keys as the model hands them: a strided view of a fused projection, in the model dtype.
    fused = torch.randn(tokens, heads, 2 * head_dim, generator=gen).to(dtype).to(DEVICE)
    k, v = fused[..., :head_dim], fused[..., head_dim:]
    want = filled_cache(dtype, head_dim, seed=1)
    got = filled_cache(dtype, head_dim, seed=1)
    want.write(1, slots, k, v, distinct_pages=False, update_metadata=metadata)  # the PyTorch path
    append_decode_kv(
        got.k[1],
        got.v[1],
        got.key_bounds[1] if metadata else None,
        got.key_sum[1] if metadata else None,
        slots,
        k,
        v,
    )
    for name in ("k", "v", "key_bounds", "key_sum"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    written = got.k[1].view(-1, head_dim)[slots.view(-1)]
    assert torch.equal(written, k.reshape(-1, head_dim))


def test_bad_layouts_are_refused():
    kv = filled_cache(torch.float32, 16, seed=2)
    k = torch.randn(2, 1, 16, device=DEVICE)
    slots = torch.tensor([[3], [40]], device=DEVICE)
    with pytest.raises(ValueError, match="together"):
        append_decode_kv(kv.k[0], kv.v[0], kv.key_bounds[0], None, slots, k, k)
    with pytest.raises(ValueError, match="slots"):
        append_decode_kv(kv.k[0], kv.v[0], None, None, slots[:1], k, k)
