"""The fused top-k + CSR write kernel against ``torch.topk`` and the gather it replaces.

Runs on CUDA when present, else on CPU through Triton's interpreter; skipped without Triton.
Per row the kernel must write the page ids of the ``count`` best older slots in slot order, then
the newest page, at the row's CSR offset, and touch nothing else of the page list. Widths that are
not a power of two (40 = 32 + 16, 72 = 64 + 16, 300 = 256 + 64, 2304 = 2048 + 256) run the
main + tail block layout; widths above ``MAX_BLOCK`` (4100, 8200) reload their blocks every pass.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels.page_select import select_pages
from lil_sparse.kernels.radix_select import MAX_BLOCK, block_layout
from lil_sparse.policies.base import PageScores, PolicyBatch, top_slots

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
UNTOUCHED = -7
# rows, width, share; the CPU interpreter is slow, so its grids are smaller.
GRID = (
    list(itertools.product([1, 5, 64], [8, 33, 40, 256, 300, 2048, 2304, 5000], [1, 2]))
    if DEVICE == "cuda"
    else [(1, 8, 1), (4, 33, 2), (3, 40, 1), (4, 72, 2), (3, 300, 1), (2, 2304, 2), (2, 4100, 2)]
)
# Scores from {0, 1, 2} (ties everywhere), slots held past the first block: the tail is in play.
TIE_GRID = (
    list(itertools.product([5, 64], [40, 300, 2304, 4100, 8200], [1, 2]))
    if DEVICE == "cuda"
    else [(3, 40, 1), (4, 72, 2), (3, 300, 1), (2, 2304, 2), (2, 4100, 1), (1, 8200, 2)]
)


def reference(scores: PageScores, batch: PolicyBatch, count, newest):
    """Per row: page ids of the top ``count`` slots (``PageScores.ranked`` + ``torch.topk``),
    sorted by slot, then the newest page."""
    ranked = scores.ranked(batch)
    out = []
    for r in range(ranked.shape[0]):
        k = int(count[r])
        slots = sorted(top_slots(ranked[r : r + 1], k)[0].tolist()) if k else []
        out.append([int(batch.table[r, s]) for s in slots] + [int(newest[r])])
    return out


def stable_reference(scores: PageScores, batch: PolicyBatch, count, newest):
    """Per row: the ``count`` best slots of ``PageScores.ranked``, the older slot first among
    equal scores (the kernel's tie rule), in slot order, then the newest page."""
    out = []
    for r, row in enumerate(scores.ranked(batch).tolist()):
        best = sorted(range(len(row)), key=lambda s: (-row[s], s))[: int(count[r])]
        out.append([int(batch.table[r, s]) for s in sorted(best)] + [int(newest[r])])
    return out


def case(rows, width, share, seed, windows=False, ties=False):
    """Random per-row scores (``-inf`` from ``held - 1`` on) of ``rows`` rows in sequences of
    ``share`` rows, with counts up to what each row can take. ``ties``: scores from {0, 1, 2},
    and older slots held past the first block (in the tail block, or the next reloaded one)."""
    gen = torch.Generator().manual_seed(seed)
    seqs = -(-rows // share)
    rows = seqs * share
    lowest = min(width, block_layout(width)[0] + 2) if ties else 1
    held = torch.randint(lowest, width + 1, (seqs,), generator=gen)
    held = held.repeat_interleave(share)
    slot = torch.arange(width).unsqueeze(0)
    values = (
        torch.randint(0, 3, (rows, width), generator=gen).float()
        if ties
        else torch.randn(rows, width, generator=gen) * 3
    )
    scores = values.masked_fill(slot >= (held - 1).unsqueeze(1), float("-inf"))
    if not windows:
        scores[:, :1] = torch.where(held.unsqueeze(1) > 1, float("inf"), float("-inf"))  # a forced slot
    sink = torch.randint(0, 3, (seqs,), generator=gen).repeat_interleave(share)
    recent = torch.randint(1, 4, (seqs,), generator=gen).repeat_interleave(share)
    count = ((held - 1).float() * torch.rand(rows, generator=gen)).long()  # 0 .. held - 1
    if windows:  # every forced slot fits in the count (as the engine's budgets guarantee)
        forced = torch.minimum(sink + recent, held) - 1
        count = torch.maximum(count, forced.clamp(min=0))
    table = torch.randperm(rows * width * 2, generator=gen)[: rows * width].view(rows, width).int()
    newest = torch.randint(0, 10**6, (rows,), generator=gen).int()
    batch = PolicyBatch(
        rows=torch.arange(rows),
        table=table,
        held=held,
        select_count=count + 1,
        sink_pages=sink,
        recent_pages=recent,
        dense_layers=torch.zeros_like(held),
        max_select=int(count.max()) + 1,
        num_kv_heads=share,
    )
    return PageScores(scores, share=share, keep_windows=windows), batch, count, newest


def run(
    scores: PageScores,
    batch: PolicyBatch,
    count,
    newest,
    out_rows=None,
    total_rows=None,
    radix=False,
    early_exit=True,
):
    """Lay rows out in a CSR list of ``total_rows`` rows (others get 3 pages) and run the kernel."""
    rows = batch.table.shape[0]
    sizes = [3] * (total_rows or rows)
    targets = range(rows) if out_rows is None else out_rows.tolist()
    for r, o in enumerate(targets):
        sizes[o] = int(count[r]) + 1
    indptr = torch.tensor([0, *itertools.accumulate(sizes)], dtype=torch.int32)
    guard = batch.table.shape[1] + 1  # a faulty kernel's extra pages land here, where they are seen
    indices = torch.full((int(indptr[-1]) + guard,), UNTOUCHED, dtype=torch.int32, device=DEVICE)
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    windows = (
        (dev(batch.held), dev(batch.sink_pages), dev(batch.recent_pages)) if scores.keep_windows else None
    )
    select_pages(
        dev(scores.scores),
        dev(count),
        dev(batch.table),
        dev(newest),
        dev(out_rows),
        dev(indptr),
        indices,
        scores.share,
        windows,
        radix=radix,
        early_exit=early_exit,
    )
    return indptr, indices.cpu()


def assert_page_lists(indptr: torch.Tensor, indices: torch.Tensor, want: list[list[int]]) -> None:
    """Row ``r`` of the CSR page list is ``want[r]``, and nothing past the last row was written."""
    assert len(want) == indptr.shape[0] - 1
    for r, pages in enumerate(want):
        assert indices[indptr[r] : indptr[r + 1]].tolist() == pages
    assert (indices[int(indptr[-1]) :] == UNTOUCHED).all()


@pytest.mark.parametrize("radix", [False, True])
@pytest.mark.parametrize("windows", [False, True])
@pytest.mark.parametrize(("rows", "width", "share"), GRID)
def test_selection_equals_topk_in_slot_order(rows, width, share, windows, radix):
    scores, batch, count, newest = case(rows, width, share, seed=rows * 7 + width + share, windows=windows)
    indptr, indices = run(scores, batch, count, newest, radix=radix)
    want = reference(scores, batch, count, newest)
    assert_page_lists(indptr, indices, want)


@pytest.mark.parametrize("radix", [False, True])
@pytest.mark.parametrize("windows", [False, True])
@pytest.mark.parametrize(("rows", "width", "share"), TIE_GRID)
def test_ties_go_to_the_older_slot_across_the_tail_boundary(rows, width, share, windows, radix):
    scores, batch, count, newest = case(rows, width, share, seed=width + share, windows=windows, ties=True)
    indptr, indices = run(scores, batch, count, newest, radix=radix)
    want = stable_reference(scores, batch, count, newest)
    assert_page_lists(indptr, indices, want)


def one_row_batch(table: torch.Tensor, count: int) -> PolicyBatch:
    """A ``PolicyBatch`` of one row holding every slot of ``table: [1, width]``, taking ``count``
    older pages plus the newest, without windows."""
    return PolicyBatch(
        rows=torch.arange(1),
        table=table,
        held=torch.tensor([table.shape[1]]),
        select_count=torch.tensor([count + 1]),
        sink_pages=torch.zeros(1, dtype=torch.long),
        recent_pages=torch.ones(1, dtype=torch.long),
        dense_layers=torch.zeros(1, dtype=torch.long),
        max_select=count + 1,
        num_kv_heads=1,
    )


@pytest.mark.parametrize("radix", [False, True])
@pytest.mark.parametrize("width", [40, 300, 4100])
def test_equal_scores_fill_the_main_block_then_the_tail_in_slot_order(width, radix):
    # Every older slot scores 1.0 and the one before the newest 2.0: the count - 1 oldest ties
    # and that slot are taken, in slot order, whether the count ends in the main block or past it.
    block = block_layout(width)[0]
    values = torch.ones(1, width)
    values[0, -2:] = torch.tensor([2.0, float("-inf")])
    scores = PageScores(values)
    table = torch.arange(1000, 1000 + width, dtype=torch.int32).unsqueeze(0)
    newest = torch.tensor([7], dtype=torch.int32)
    for k in (1, block - 1, block, block + 2, width - 1):
        batch = one_row_batch(table, k)
        _, indices = run(scores, batch, torch.tensor([k]), newest, radix=radix)
        want = [1000 + s for s in range(k - 1)] + [1000 + width - 2, 7]
        assert indices[: k + 1].tolist() == want, k


def test_block_layout_holds_two_blocks_up_to_max_block_then_reloads():
    assert block_layout(2304) == (2048, 256, 1)  # the 8B/batch 8/32k step: not one 4096 block
    assert block_layout(2048) == (2048, 0, 1)
    assert block_layout(40) == (32, 16, 1)
    assert block_layout(300) == (256, 64, 1)
    assert block_layout(17) == (16, 16, 1)
    assert block_layout(5) == (16, 0, 1)
    assert block_layout(4100) == (4096, 0, 2)
    assert block_layout(8200) == (4096, 0, 3)
    for width in range(1, 2 * MAX_BLOCK + 2):
        block, tail, num_blocks = block_layout(width)
        assert block * num_blocks + tail >= width
        assert tail == 0 or (num_blocks == 1 and 16 <= tail <= block < width <= block + tail)
        if width <= MAX_BLOCK:  # never more slots than the one padded block it replaces
            assert num_blocks == 1 and block + tail <= max(16, 1 << (width - 1).bit_length())


@pytest.mark.parametrize("radix", [False, True])
@pytest.mark.parametrize("width", [40, 300])
def test_rows_land_at_their_step_rows_and_nothing_else_changes(width, radix):
    scores, batch, count, newest = case(4, width, 2, seed=3, windows=True)
    out_rows = torch.tensor([6, 1, 3, 0])
    indptr, indices = run(scores, batch, count, newest, out_rows, total_rows=8, radix=radix)
    want = reference(scores, batch, count, newest)
    for r, o in enumerate(out_rows.tolist()):
        assert indices[indptr[o] : indptr[o + 1]].tolist() == want[r]
    for o in (2, 4, 5, 7):  # rows of other policies: untouched
        assert indices[indptr[o] : indptr[o + 1]].tolist() == [UNTOUCHED] * 3


def test_ties_go_to_the_older_slot_and_extremes_order():
    # Scores with ties at the threshold, -0.0 vs 0.0, +inf and tiny negatives.
    values = [[1.0, 2.0, 1.0, float("inf"), 1.0, -0.0, 0.0, -1e-30, 2.0, float("-inf")]]
    scores = PageScores(torch.tensor(values, dtype=torch.float32))
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
    for (k, want), radix in itertools.product(expected.items(), (False, True)):
        _, indices = run(scores, one_row_batch(table, k), torch.tensor([k]), newest, radix=radix)
        assert indices[: k + 1].tolist() == want, k


def test_shape_errors_name_the_problem():
    scores, batch, count, newest = case(2, 16, 1, seed=1)
    indptr = torch.zeros(3, dtype=torch.int32)
    indices = torch.zeros(64, dtype=torch.int32)
    with pytest.raises(ValueError, match="select_pages"):
        select_pages(scores.scores, count[:1], batch.table, newest, None, indptr, indices)
    with pytest.raises(ValueError, match="share"):
        select_pages(
            scores.scores[:1], count[:1], batch.table[:1], newest[:1], None, indptr, indices, share=2
        )
