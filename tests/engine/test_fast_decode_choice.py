"""Which decode slots get the Triton decode (:func:`make_fast_decode`), on CPU: the choice depends
only on the slot's rows, the SM count, the model's head_dim and the page size, never on a GPU."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.attention.flashinfer_decode_slot import make_fast_decode

H200_SMS = 132


@pytest.mark.parametrize("rows, splits", [(1, 64), (2, 64), (4, 64), (8, 32)])
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
