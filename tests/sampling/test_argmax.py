"""``argmax_rows`` (two reductions) equals ``torch.argmax`` on every kind of row."""

from __future__ import annotations

import pytest
import torch

from lil_sparse.sampling.argmax import argmax_rows, chunk_width

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_chunk_width_divides_near_the_square_root():
    assert chunk_width(128256) == 334  # Llama 3: 2^8 x 3 x 167
    assert chunk_width(151936) == 128  # Qwen2: 2^7 x 1187
    assert chunk_width(49152) == 192  # SmolLM2
    assert chunk_width(97) == 0  # prime: no chunk
    assert chunk_width(100) == 0  # divisors below MIN_CHUNK only


def rows_of_every_kind(width: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(width)
    x = torch.randn(12, width, generator=gen)
    x[1] = 0.0  # all tied: index 0
    x[2, [5, width - 3, width // 2]] = 50.0  # ties in different chunks: the first
    x[3, [width // 2, width // 2 + 1]] = 50.0  # ties inside one chunk
    x[4] = float("-inf")  # nothing but -inf: index 0
    x[5, width - 1] = float("inf")  # +inf in the last slot
    x[6, [7, width - 2]] = float("nan")  # NaN counts as the largest
    x[7, width // 3] = float("nan")
    x[8, [3, width - 1]] = float("inf")
    x[9] = -x[9].abs() - 1  # all negative
    x[10, :] = 0.0
    x[10, width - 1] = 1.0  # the last slot
    x[11, :] = -torch.arange(width, dtype=torch.float32) / width  # the first slot
    return x.to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [128256, 151936, 49152, 4096, 97])
def test_argmax_rows_equals_torch_argmax(device, dtype, width):
    x = rows_of_every_kind(width, dtype).to(device)
    got = argmax_rows(x)
    assert got.dtype == torch.int64 and got.shape == (12,)
    assert torch.equal(got, x.argmax(dim=-1))
    assert got[1].item() == 0 and got[4].item() == 0 and got[11].item() == 0
    assert got[2].item() == 5 and got[3].item() == width // 2 and got[10].item() == width - 1


@pytest.mark.parametrize("device", DEVICES)
def test_random_batches_and_views(device):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 49152, generator=gen).round(decimals=1).to(device)  # many exact ties
    assert torch.equal(argmax_rows(x), x.argmax(dim=-1))
    view = x[:, :4096]  # not contiguous: torch.argmax itself
    assert torch.equal(argmax_rows(view), view.argmax(dim=-1))
    assert argmax_rows(x[:0]).shape == (0,)
    with pytest.raises(ValueError, match=r"\[rows, width\]"):
        argmax_rows(x[0])
