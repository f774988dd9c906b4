"""H2O's fused page-mass kernel against the reference probability pass, over a grid.

The log-sum-exp is computed here from the reference scores (in log2, FlashInfer's convention);
``tests/gpu/test_flashinfer_layer.py`` checks FlashInfer's own ``lse`` against it. Both sides
score bf16 keys with fp32 accumulation; masses agree to ``rtol 1e-4, atol 1e-5`` and each row
sums to the group size.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.attention.reference import paged_page_probs, paged_scores
from lil_sparse.kernels.page_mass import add_page_mass

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRID = (
    list(itertools.product([1, 5], [1, 4, 6], [64, 128], [8, 33]))
    if DEVICE == "cuda"
    else [(1, 1, 16, 8), (3, 4, 32, 9)]
)
PAGE_SIZE = 16


@pytest.mark.parametrize(("rows", "group", "head_dim", "width"), GRID)
def test_page_mass_matches_reference(rows, group, head_dim, width):
    gen = torch.Generator().manual_seed(rows * 100 + width + group)
    num_pages = rows * width + 3
    k_pages = torch.randn(num_pages, 1, PAGE_SIZE, head_dim, generator=gen).to(DEVICE, torch.bfloat16)
    q = torch.randn(rows, group, head_dim, generator=gen).to(DEVICE, torch.bfloat16)
    page_ids = torch.randperm(num_pages, generator=gen)[: rows * width].view(rows, width)
    page_ids = page_ids.to(DEVICE, torch.int32)
    counts = torch.randint(1, width + 1, (rows,), generator=gen).tolist()
    last = torch.randint(1, PAGE_SIZE + 1, (rows,), generator=gen, dtype=torch.int32).to(DEVICE)
    layout = DecodeLayout.build(counts, last)
    scores = paged_scores(q, k_pages, page_ids, layout, width)  # [rows, G, width * S]
    lse_log2 = torch.logsumexp(scores, dim=-1) / math.log(2)

    want = torch.rand(num_pages, generator=gen).to(DEVICE)
    got = want.clone()
    probs = paged_page_probs(q, k_pages, page_ids, layout, width)  # [rows, width]
    want.index_add_(0, page_ids.reshape(-1).long(), probs.reshape(-1))
    add_page_mass(q, k_pages, page_ids, layout.counts, last, lse_log2, got)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_page_mass_of_one_uniform_page():
    """Equal keys: every one of the page's 5 tokens gets 1/5 per query; 2 queries -> mass 2."""
    k_pages = torch.ones(3, 1, PAGE_SIZE, 16, dtype=torch.bfloat16, device=DEVICE)
    q = torch.ones(1, 2, 16, dtype=torch.bfloat16, device=DEVICE)
    page_ids = torch.tensor([[2, 0]], dtype=torch.int32, device=DEVICE)
    score = 16 / math.sqrt(16)
    lse_log2 = torch.full((1, 2), (score + math.log(5)) / math.log(2), device=DEVICE)
    mass = torch.zeros(3, device=DEVICE)
    counts = torch.tensor([1], dtype=torch.int32, device=DEVICE)
    last = torch.tensor([5], dtype=torch.int32, device=DEVICE)
    add_page_mass(q, k_pages, page_ids, counts, last, lse_log2, mass)
    torch.testing.assert_close(mass, torch.tensor([0.0, 0.0, 2.0], device=DEVICE), rtol=1e-5, atol=1e-5)
