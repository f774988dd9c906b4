"""The fused Quest/InfLLM scoring kernel against the policies' PyTorch references, over a grid.

Runs on CUDA when present, else on CPU through Triton's interpreter; skipped without Triton.
Both sides compute in fp32 from the same bf16 (or fp32) inputs and differ only in summation
order, so scores agree to ``rtol 1e-5, atol 1e-4`` and the selected pages are identical.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels.page_scores import infllm_scores, quest_scores
from lil_sparse.policies.base import top_slots
from lil_sparse.policies.infllm import infllm_row_scores
from lil_sparse.policies.quest import quest_page_scores

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# rows, group, head_dim, width; the CPU interpreter is slow, so its grid is smaller.
GRID = (
    list(itertools.product([1, 6], [1, 4, 6], [64, 128], [7, 40, 100, 1500]))
    if DEVICE == "cuda"
    else [(1, 1, 16, 7), (3, 4, 32, 40), (2, 6, 64, 33), (2, 4, 32, 1100)]
)
DTYPES = [torch.bfloat16, torch.float32]


def random_case(rows, group, head_dim, width, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    num_pages = rows * width + 5
    low = torch.randn(num_pages, head_dim, generator=gen) - 1.0
    bounds = torch.stack((low, low + torch.rand(num_pages, head_dim, generator=gen) * 2), dim=1)
    key_mean = torch.randn(num_pages, head_dim, generator=gen) / 4  # a mean of 16 unit keys
    table = torch.randperm(num_pages, generator=gen)[: rows * width].view(rows, width).to(torch.int32)
    held = torch.randint(1, width + 1, (rows,), generator=gen)
    q = torch.randn(rows, group, head_dim, generator=gen)
    to = lambda t, d=None: t.to(DEVICE, d) if d is not None else t.to(DEVICE)  # noqa: E731
    return to(q, dtype), to(bounds, dtype), to(key_mean, dtype), to(table), to(held)


def chosen_pages(scores: torch.Tensor, count: int) -> list[set[int]]:
    """Per row, the slots top-k picks among the finite scores (-inf slots are never used)."""
    top = top_slots(scores, count)
    finite = torch.isfinite(scores.gather(1, top))
    return [set(row[keep].tolist()) for row, keep in zip(top, finite, strict=True)]


def assert_same_selection(got: torch.Tensor, want: torch.Tensor, count: int) -> None:
    assert chosen_pages(got, count) == chosen_pages(want, count)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "group", "head_dim", "width"), GRID)
def test_quest_kernel_matches_reference(rows, group, head_dim, width, dtype):
    q, bounds, _, table, held = random_case(rows, group, head_dim, width, dtype, seed=width + group)
    # A strided column, as the policy batch passes it.
    strided_held = torch.stack((held, torch.zeros_like(held)), dim=1)[:, 0]
    got = quest_scores(q, bounds, table, strided_held)
    want = quest_page_scores(q, bounds[table.long()])
    slots = torch.arange(width, device=DEVICE).unsqueeze(0)
    want = want.masked_fill(slots >= (held - 1).unsqueeze(1), float("-inf"))
    assert got.dtype == torch.float32 and got.shape == (rows, width)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert_same_selection(got, want, max(1, width // 4))


@pytest.mark.parametrize(("rows", "group", "head_dim", "width"), GRID)
def test_infllm_kernel_matches_reference(rows, group, head_dim, width):
    q, _, key_mean, table, held = random_case(rows, group, head_dim, width, torch.bfloat16, seed=width)
    got = infllm_scores(q, key_mean, table, held)
    want = infllm_row_scores(q, key_mean[table.long()])
    slots = torch.arange(width, device=DEVICE).unsqueeze(0)
    want = want.masked_fill(slots >= (held - 1).unsqueeze(1), float("-inf"))
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert_same_selection(got, want, max(1, width // 4))


def test_quest_bound_of_known_values():
    """One page, hand-computed: q = [[1, -2]], min = [0, 1], max = [3, 4] -> 1*3 + (-2)*1 = 1."""
    q = torch.tensor([[[1.0, -2.0] + [0.0] * 14]], device=DEVICE)
    bounds = torch.zeros(2, 2, 16, device=DEVICE)
    bounds[1, 0, :2] = torch.tensor([0.0, 1.0])
    bounds[1, 1, :2] = torch.tensor([3.0, 4.0])
    table = torch.tensor([[1, 0]], dtype=torch.int32, device=DEVICE)
    got = quest_scores(q, bounds, table, torch.tensor([2], device=DEVICE))  # 2 held: slot 1 is the newest
    assert got.tolist() == [[1.0, float("-inf")]]
