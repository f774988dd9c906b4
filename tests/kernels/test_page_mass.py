"""H2O's fused page-mass kernels against the reference probability pass, over a grid.

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
from lil_sparse.kernels.page_mass import SUM_BLOCK, add_page_mass, add_page_mass_layers

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


LAYER_GRID = (
    list(itertools.product([1, 3, 8], [1, 6], [128], [9, 65], [1, 4]))
    if DEVICE == "cuda"
    else [(1, 6, 32, 9, 3), (3, 4, 16, 5, 2), (2, 1, 16, 3, 1)]
)


@pytest.mark.parametrize(("rows", "group", "head_dim", "width", "layers"), LAYER_GRID)
def test_page_mass_of_every_layer_matches_reference(rows, group, head_dim, width, layers):
    """One step's mass over ``layers`` layers at once (each with its own keys, queries and lse)
    equals the reference added layer by layer; the pages past each row's count keep their mass."""
    check_every_layer(rows, group, head_dim, width, layers)


def test_page_mass_of_every_layer_past_one_sum_block():
    """Rows of more pages than one program of the sum over layers covers (``SUM_BLOCK``, fewer
    than a 32k-token row's 2048): the second block's slots, full or partly, and a short row."""
    check_every_layer(3, 2, 16, SUM_BLOCK + 5, 2, counts=[SUM_BLOCK + 5, SUM_BLOCK + 1, 3])


def check_every_layer(
    rows: int, group: int, head_dim: int, width: int, layers: int, counts: list[int] | None = None
) -> None:
    """:func:`add_page_mass_layers` against the reference layer by layer, on random inputs;
    ``counts``: each row's pages (random when None)."""
    gen = torch.Generator().manual_seed(rows * 1000 + width * 10 + group + layers)
    num_pages = rows * width + 3
    k_layers = torch.randn(layers, num_pages, 1, PAGE_SIZE, head_dim, generator=gen).to(
        DEVICE, torch.bfloat16
    )
    q_layers = torch.randn(layers, rows, group, head_dim, generator=gen).to(DEVICE, torch.bfloat16)
    page_ids = torch.randperm(num_pages, generator=gen)[: rows * width].view(rows, width)
    page_ids = page_ids.to(DEVICE, torch.int32)
    drawn = torch.randint(1, width + 1, (rows,), generator=gen).tolist()
    counts = drawn if counts is None else counts
    last = torch.randint(1, PAGE_SIZE + 1, (rows,), generator=gen, dtype=torch.int32).to(DEVICE)
    layout = DecodeLayout.build(counts, last)

    want = torch.rand(num_pages, generator=gen).to(DEVICE)
    got = want.clone()
    lse_layers = []
    for layer in range(layers):
        q, k_pages = q_layers[layer], k_layers[layer]
        scores = paged_scores(q, k_pages, page_ids, layout, width)
        lse_layers.append(torch.logsumexp(scores, dim=-1) / math.log(2))
        probs = paged_page_probs(q, k_pages, page_ids, layout, width)
        want.index_add_(0, page_ids.reshape(-1).long(), probs.reshape(-1))
    add_page_mass_layers(q_layers, k_layers, page_ids, layout.counts, last, torch.stack(lse_layers), got)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # Pages no row attends (the 3 spare ones, and those past a row's count) are untouched.
    attended = torch.zeros(num_pages, dtype=torch.bool, device=DEVICE)
    for row, count in enumerate(counts):
        attended[page_ids[row, :count].long()] = True
    assert torch.equal(got[~attended], want[~attended])


def test_page_mass_layers_add_the_group_size_per_layer():
    """Each layer's probabilities sum to 1 per query: 2 layers of 3 queries add 6 per row."""
    rows, group, layers, width = 2, 3, 2, 4
    gen = torch.Generator().manual_seed(5)
    k_layers = torch.randn(layers, 9, 1, PAGE_SIZE, 16, generator=gen).to(DEVICE, torch.bfloat16)
    q_layers = torch.randn(layers, rows, group, 16, generator=gen).to(DEVICE, torch.bfloat16)
    page_ids = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=torch.int32, device=DEVICE)
    counts = [4, 2]
    last = torch.tensor([7, 16], dtype=torch.int32, device=DEVICE)
    layout = DecodeLayout.build(counts, last)
    lse = torch.stack(
        [
            torch.logsumexp(paged_scores(q_layers[i], k_layers[i], page_ids, layout, width), dim=-1)
            / math.log(2)
            for i in range(layers)
        ]
    )
    mass = torch.zeros(9, device=DEVICE)
    add_page_mass_layers(q_layers, k_layers, page_ids, layout.counts, last, lse, mass)
    totals = [mass[:4].sum().item(), mass[4:6].sum().item()]
    assert totals == pytest.approx([group * layers] * rows, rel=1e-4)
    assert mass[6:].tolist() == [0.0, 0.0, 0.0]


def test_page_mass_layers_refuse_mismatched_layer_counts():
    k_layers = torch.zeros(3, 4, 1, PAGE_SIZE, 16, dtype=torch.bfloat16, device=DEVICE)
    q_layers = torch.zeros(2, 1, 1, 16, dtype=torch.bfloat16, device=DEVICE)
    page_ids = torch.zeros(1, 2, dtype=torch.int32, device=DEVICE)
    ones = torch.ones(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="one entry per layer"):
        add_page_mass_layers(q_layers, k_layers, page_ids, ones, ones, torch.zeros(2, 1, 1), torch.zeros(4))
