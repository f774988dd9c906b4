"""The fused top-k + CSR write kernel against ``torch.topk`` and the gather it replaces.

Runs on CUDA when present, else on CPU through Triton's interpreter; skipped without Triton.
Per row the kernel must write the page ids of the ``count`` best older slots in slot order, then
the newest page, at the row's CSR offset, and touch nothing else of the page list.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels.page_select import select_pages
from lil_sparse.policies.base import top_slots

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
UNTOUCHED = -7
# rows, width, share; the CPU interpreter is slow, so its grid is smaller.
GRID = (
    list(itertools.product([1, 5, 64], [8, 33, 256, 2048, 5000], [1, 2]))
    if DEVICE == "cuda"
    else [(1, 8, 1), (4, 33, 2), (3, 300, 1), (2, 4100, 2)]
)


def reference(scores, share, count, table, newest):
    """Per row: page ids of the top ``count`` slots (torch.topk), sorted by slot, then newest."""
    rows = table.shape[0]
    full = scores.repeat_interleave(share, dim=0)
    out = []
    for r in range(rows):
        k = int(count[r])
        slots = sorted(top_slots(full[r : r + 1], k)[0].tolist()) if k else []
        out.append([int(table[r, s]) for s in slots] + [int(newest[r])])
    return out


def case(rows, width, share, seed):
    gen = torch.Generator().manual_seed(seed)
    seqs = -(-rows // share)
    rows = seqs * share
    scores = torch.randn(seqs, width, generator=gen) * 3
    held = torch.randint(1, width + 1, (seqs,), generator=gen)
    slot = torch.arange(width).unsqueeze(0)
    scores = scores.masked_fill(slot >= (held - 1).unsqueeze(1), float("-inf"))  # newest, padding
    scores[:, :1] = float("inf")  # a forced (sink) slot where one exists
    scores = scores.masked_fill(slot >= (held - 1).unsqueeze(1), float("-inf"))
    older = (held - 1).repeat_interleave(share)
    count = (older.float() * torch.rand(rows, generator=gen)).long()  # 0 .. held - 1
    table = torch.randperm(rows * width * 2, generator=gen)[: rows * width].view(rows, width).int()
    newest = torch.randint(0, 10**6, (rows,), generator=gen).int()
    return scores, count, table, newest


def run(scores, count, table, newest, out_rows, share, total_rows):
    """Lay rows out in a CSR list of ``total_rows`` rows (others get 3 pages) and run the kernel."""
    sizes = [3] * total_rows
    targets = range(table.shape[0]) if out_rows is None else out_rows.tolist()
    for r, o in enumerate(targets):
        sizes[o] = int(count[r]) + 1
    indptr = torch.tensor([0, *itertools.accumulate(sizes)], dtype=torch.int32)
    indices = torch.full((int(indptr[-1]) + 11,), UNTOUCHED, dtype=torch.int32)
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    indices_dev = indices.to(DEVICE)
    select_pages(
        dev(scores), dev(count), dev(table), dev(newest), dev(out_rows), dev(indptr), indices_dev, share
    )
    return indptr, indices_dev.cpu()


@pytest.mark.parametrize(("rows", "width", "share"), GRID)
def test_selection_equals_topk_in_slot_order(rows, width, share):
    scores, count, table, newest = case(rows, width, share, seed=rows * 7 + width + share)
    rows = table.shape[0]
    indptr, indices = run(scores, count, table, newest, None, share, rows)
    want = reference(scores, share, count, table, newest)
    for r in range(rows):
        assert indices[indptr[r] : indptr[r + 1]].tolist() == want[r]
    assert (indices[int(indptr[-1]) :] == UNTOUCHED).all()


def test_rows_land_at_their_step_rows_and_nothing_else_changes():
    scores, count, table, newest = case(4, 40, 2, seed=3)
    out_rows = torch.tensor([6, 1, 3, 0])
    indptr, indices = run(scores, count, table, newest, out_rows, 2, total_rows=8)
    want = reference(scores, 2, count, table, newest)
    for r, o in enumerate(out_rows.tolist()):
        assert indices[indptr[o] : indptr[o + 1]].tolist() == want[r]
    for o in (2, 4, 5, 7):  # rows of other policies: untouched
        assert indices[indptr[o] : indptr[o + 1]].tolist() == [UNTOUCHED] * 3


def test_ties_go_to_the_older_slot_and_extremes_order():
    # Scores with ties at the threshold, -0.0 vs 0.0, +inf and tiny negatives.
    scores = torch.tensor(
        [[1.0, 2.0, 1.0, float("inf"), 1.0, -0.0, 0.0, -1e-30, 2.0, float("-inf")]], dtype=torch.float32
    )
    table = torch.arange(100, 110, dtype=torch.int32).unsqueeze(0)
    newest = torch.tensor([999], dtype=torch.int32)
    expected = {
        0: [999],
        1: [103, 999],  # +inf first
        3: [101, 103, 108, 999],  # inf, 2, 2 in slot order
        4: [100, 101, 103, 108, 999],  # one tie at 1.0: the oldest (slot 0)
        6: [100, 101, 102, 103, 104, 108, 999],
        7: [100, 101, 102, 103, 104, 106, 108, 999],  # 0.0 > -0.0
        9: [100, 101, 102, 103, 104, 105, 106, 107, 108, 999],  # every finite slot
    }
    for k, want in expected.items():
        _, indices = run(scores, torch.tensor([k]), table, newest, None, 1, 1)
        assert indices[: k + 1].tolist() == want, k


def test_shape_errors_name_the_problem():
    scores, count, table, newest = case(2, 16, 1, seed=1)
    indptr = torch.zeros(3, dtype=torch.int32)
    indices = torch.zeros(64, dtype=torch.int32)
    with pytest.raises(ValueError, match="select_pages"):
        select_pages(scores, count[:1], table, newest, None, indptr, indices)
    with pytest.raises(ValueError, match="share"):
        select_pages(scores, count, table, newest, None, indptr, indices, share=2)
