"""FlashInfer decode plan reuse: which steps must call ``plan()`` (no GPU needed).

The plan depends on the page counts alone (``needs_plan``'s docstring cites FlashInfer 0.6.6), so
over a run of decode steps a slot plans on the first step and on each step where some row's page
count differs from the one it was planned with; steps that only move ``last_page_len`` keep it.
The GPU side (outputs with reuse equal a fresh plan every step) is
``tests/gpu/test_flashinfer_layer.py::test_plan_reuse_equals_a_fresh_plan_every_step``.
"""

from __future__ import annotations

from lil_sparse.attention.flashinfer_backend import needs_plan

PAGE_SIZE = 16


def plan_steps(start_lengths: list[int], steps: int, budget_pages: int | None) -> list[int]:
    """Steps at which a slot calls ``plan()`` while every row grows by one token per step."""
    planned: tuple[int, ...] | None = None
    planned_at = []
    for step in range(steps):
        held = [-(-(length + step) // PAGE_SIZE) for length in start_lengths]
        counts = tuple(held if budget_pages is None else [min(h, budget_pages) for h in held])
        if needs_plan(planned, counts):
            planned_at.append(step)
            planned = counts
    return planned_at


def test_full_rows_plan_once_per_page_crossing() -> None:
    # Row lengths 5, 16, 31 read at steps 0..39: a row's count grows when its length reaches
    # 17, 33 or 49, i.e. row 0 at steps 12 and 28, row 1 at 1, 17, 33, row 2 at 2, 18, 34.
    assert plan_steps([5, 16, 31], 40, None) == [0, 1, 2, 12, 17, 18, 28, 33, 34]


def test_rows_at_their_budget_never_plan_again() -> None:
    # A 4-page budget (sink/h2o/quest at 64 tokens): rows already over it keep 4 pages; row 0
    # (length 40, 3 pages) reaches 4 pages at length 49 (step 9) and stays there.
    assert plan_steps([40, 100, 200], 60, 4) == [0, 9]


def test_same_counts_need_no_plan_and_any_change_does() -> None:
    assert not needs_plan((3, 1, 4), (3, 1, 4))
    assert needs_plan(None, (3, 1, 4))
    assert needs_plan((3, 1, 4), (3, 1, 5))
    assert needs_plan((3, 1, 4), (3, 1, 4, 1))  # another row count (another slot in practice)
