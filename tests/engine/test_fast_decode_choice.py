"""Which decode slots get the Triton decode (:func:`make_fast_decode`), on CPU: the choice depends
only on the slot's rows, the SM count, the model's head_dim and the page size, never on a GPU."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.attention.reference import ReferenceBackend, paged_scores
from lil_sparse.kernels.fast_decode import make_fast_decode

H200_SMS = 132
# Kernels on CPU tensors run through Triton's interpreter, which tests/conftest.py turns on only
# without CUDA (the GPU tests run the kernels on the device).
cpu_kernels = pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU test: Triton's interpreter is off with CUDA"
)


@pytest.mark.parametrize("rows, splits", [(1, 128), (2, 128), (4, 64), (8, 32)])
def test_few_rows_get_the_triton_decode_with_its_scratch(rows, splits):
    fast = make_fast_decode(rows, 6, 128, 16, H200_SMS, torch.device("cpu"))
    assert fast is not None
    assert (fast.tiles.splits, fast.tiles.block_pages) == (splits, 8)
    assert fast.scratch.partial_out.shape == (rows, splits, 6, 128)
    assert fast.scratch.partial_out.dtype == torch.float32
    assert fast.scratch.partial_lse.shape == (rows, splits, 6)


@pytest.mark.parametrize(
    "rows, head_dim, page_size, sms",
    [
        (16, 128, 16, H200_SMS),  # 16 splits per row: below MIN_SPLITS
        (2, 128, 16, 8),  # a small GPU: 8 splits per row
        (2, 256, 16, H200_SMS),  # head_dim never compiled for a GPU
        (2, 64, 256, H200_SMS),  # a page wider than a loop step
    ],
)
def test_other_slots_keep_flashinfer(rows, head_dim, page_size, sms):
    assert make_fast_decode(rows, 4, head_dim, page_size, sms, torch.device("cpu")) is None


@cpu_kernels
@pytest.mark.parametrize("return_lse", [False, True])
def test_a_slots_run_is_the_kernel_over_its_buffers(return_lse):
    """What ``DecodeSlot.run`` returns on the fast path: the kernel's output (and its lse, only
    when asked) over the slot's CSR buffers, checked against the reference decode."""
    gen = torch.Generator().manual_seed(0)
    rows, group, head_dim, page_size = 2, 4, 64, 16
    fast = make_fast_decode(rows, group, head_dim, page_size, H200_SMS, torch.device("cpu"))
    assert fast is not None
    k_pages = torch.randn(8, 1, page_size, head_dim, generator=gen).to(torch.bfloat16)
    v_pages = torch.randn(8, 1, page_size, head_dim, generator=gen).to(torch.bfloat16)
    q = torch.randn(rows, group, head_dim, generator=gen).to(torch.bfloat16)
    page_ids = torch.tensor([[3, 1, 6], [2, 7, 0]], dtype=torch.int32)
    layout = DecodeLayout.build([3, 2], torch.tensor([5, 16], dtype=torch.int32), (5, 16))
    indices = page_ids.reshape(-1)[layout.flat_positions]
    out, lse = fast.run(q, k_pages, v_pages, layout.indptr, indices, layout.last_page_len, return_lse)
    want = ReferenceBackend().decode(0, q, k_pages, v_pages, page_ids, layout)
    torch.testing.assert_close(out.float(), want.float(), atol=1e-2, rtol=1e-2)
    if not return_lse:
        assert lse is None
    else:
        want_lse = torch.logsumexp(paged_scores(q, k_pages, page_ids, layout), dim=-1) / math.log(2)
        torch.testing.assert_close(lse, want_lse, atol=1e-3, rtol=1e-3)


@cpu_kernels
def test_compile_runs_every_tile_over_empty_rows_and_the_slot_still_decodes():
    """``FastDecode.compile`` runs every tile :func:`step_tiles` may pick over rows of no pages
    (the scratch it leaves: every partial lse ``-inf``, every partial output 0) and leaves a slot
    whose runs still match the reference; a step's tiles must be one the slot built."""
    from lil_sparse.kernels.fast_decode import block_pages_options, step_tiles
    from lil_sparse.kernels.paged_decode import DecodeTiles

    rows, group, head_dim, page_size = 2, 4, 64, 16
    fast = make_fast_decode(rows, group, head_dim, page_size, 8 * 4, torch.device("cpu"))
    assert fast is not None and fast.tiles.splits == 32
    assert block_pages_options(fast.tiles) == (1, 2, 4, 8)
    fast.scratch.partial_out.fill_(float("nan"))
    fast.scratch.partial_lse.fill_(float("nan"))
    fast.compile(torch.bfloat16)
    assert fast.scratch.partial_out.shape == (rows, 32, group, head_dim)
    assert torch.equal(fast.scratch.partial_out, torch.zeros_like(fast.scratch.partial_out))
    assert torch.isneginf(fast.scratch.partial_lse).all()
    gen = torch.Generator().manual_seed(1)
    k_pages = torch.randn(40, 1, page_size, head_dim, generator=gen).to(torch.bfloat16)
    v_pages = torch.randn(40, 1, page_size, head_dim, generator=gen).to(torch.bfloat16)
    q = torch.randn(rows, group, head_dim, generator=gen).to(torch.bfloat16)
    page_ids = torch.randperm(40, generator=gen)[:36].to(torch.int32).reshape(2, 18)
    layout = DecodeLayout.build([18, 11], torch.tensor([3, 16], dtype=torch.int32), (3, 16))
    indices = page_ids.reshape(-1)[layout.flat_positions]
    tiles = step_tiles(fast.tiles, 18)
    assert tiles.block_pages == 1
    out, _ = fast.run(q, k_pages, v_pages, layout.indptr, indices, layout.last_page_len, False, tiles)
    want = ReferenceBackend().decode(0, q, k_pages, v_pages, page_ids, layout)
    torch.testing.assert_close(out.float(), want.float(), atol=1e-2, rtol=1e-2)
    csr = (layout.indptr, indices, layout.last_page_len)
    with pytest.raises(ValueError, match="splits"):
        fast.run(q, k_pages, v_pages, *csr, False, DecodeTiles(16, 1))
    with pytest.raises(ValueError, match="pages per step"):
        fast.run(q, k_pages, v_pages, *csr, False, DecodeTiles(32, 16))
