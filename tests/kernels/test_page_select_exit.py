"""The radix select's early exit (:mod:`lil_sparse.kernels.page_select`): the kernel stops after
the pass whose boundary bin holds exactly the keys still wanted, and writes the same pages as all
four passes (``early_exit=False``).

Page lists are checked on CUDA or on CPU through Triton's interpreter. The passes the kernel ran
are counted only under the interpreter, where ``radix_select.digit_histogram`` is a Python
function called once per pass for each block (main, tail or reloaded); on CUDA that check is
skipped.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels import radix_select
from lil_sparse.kernels.radix_select import block_layout
from lil_sparse.policies.base import PageScores, PolicyBatch
from tests.kernels.test_page_select import (
    assert_page_lists,
    case,
    one_row_batch,
    reference,
    run,
    stable_reference,
)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
WIDTHS = [40, 2304, 4100]  # main + tail (32 + 16, 2048 + 256), two reloaded blocks


def keys_of(row: torch.Tensor) -> list[int]:
    """The kernel's order-preserving 32-bit keys of a row of fp32 scores."""
    bits = row.float().contiguous().view(torch.int32).long()
    return (torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2**31).tolist()


def passes_to_settle(keys: list[int], count: int) -> int:
    """Radix passes until the chosen digit's bin holds exactly the keys still wanted (at most 4):
    the rule of the kernel, written out plainly."""
    prefix, remaining = 0, count
    for step in range(4):
        shift = 24 - 8 * step
        bins = Counter((k >> shift) & 255 for k in keys if k >> (shift + 8) == prefix >> (shift + 8))
        at_least = [sum(n for b, n in bins.items() if b >= d) for d in range(257)]
        digit = max((d for d in range(256) if at_least[d] >= remaining), default=0)
        remaining -= at_least[digit + 1]
        prefix |= digit << shift
        if bins[digit] == remaining:
            return step + 1
    return 4


def settling(scores: PageScores, batch: PolicyBatch, count: torch.Tensor) -> list[int]:
    """:func:`passes_to_settle` of each row's ranking scores."""
    ranked = scores.ranked(batch)
    return [passes_to_settle(keys_of(row), int(k)) for row, k in zip(ranked, count, strict=True)]


@pytest.fixture
def histograms(monkeypatch) -> list[int]:
    """Grows by one per ``digit_histogram`` call of the kernel (under the interpreter only)."""
    calls: list[int] = []
    if INTERPRETED:
        original = radix_select.digit_histogram

        def counted(*args):
            calls.append(1)
            return original(*args)

        monkeypatch.setattr(radix_select, "digit_histogram", counted)
    return calls


def passes_run(calls: list[int], width: int) -> int:
    """Radix passes the kernel ran, from its histogram calls (one per block per pass)."""
    _, tail, num_blocks = block_layout(width)
    per_pass = num_blocks + (tail > 0)
    assert len(calls) % per_pass == 0
    return len(calls) // per_pass


def spread(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` distinct values in [0, 1), in random order."""
    return torch.randperm(n, generator=gen).float() / n


def crafted(kind: str, width: int, gen: torch.Generator) -> tuple[torch.Tensor, int, int]:
    """One row of ``width`` scores (the last ``-inf``, the newest page's, except for
    ``every_slot_top_digit_zero``), its count and the pass after which the select settles."""
    n = width - 1
    row = torch.empty(width)
    row[-1] = float("-inf")
    close = min(n // 2, 200)  # keys sharing their top three digits (distinct below 256)
    k = n // 5
    if kind in ("top_digit", "second_digit", "negative"):  # k chosen, the rest in a lower bin
        if kind == "top_digit":  # keys 0xc4.. against 0xbf..
            chosen, rest = 1000 + 500 * spread(k, gen), 1 + 0.45 * spread(n - k, gen)
        elif kind == "second_digit":  # keys 0xbfc0.. against 0xbf80 .. 0xbfb9
            chosen, rest = 1.5 + 0.007 * spread(k, gen), 1 + 0.45 * spread(n - k, gen)
        else:  # keys 0x40.. against 0x3b..
            chosen, rest = -1 - 0.9 * spread(k, gen), -600 - 400 * spread(n - k, gen)
        row[:n] = torch.cat([chosen, rest])[torch.randperm(n, generator=gen)]
        return row, k, 2 if kind == "second_digit" else 1
    if kind in ("last_digit", "ties_split", "ties_taken_whole"):
        ulps = torch.randperm(256, generator=gen)[:close]  # 1.0 + i ulp: one bin until the last digit
        near = (ulps + 0x3F800000).int().view(torch.float32) if kind == "last_digit" else torch.ones(close)
        top = n // 10 if kind == "ties_taken_whole" else 0
        values = torch.cat([2 + spread(top, gen), near, 0.25 + 0.2 * spread(n - top - close, gen)])
        row[:n] = values[torch.randperm(n, generator=gen)]
        if kind == "ties_taken_whole":  # every 2.x and every 1.0: the bin of 1.0 is exact at pass 1
            return row, top + close, 1
        return row, close // 2, 4  # last_digit: exact only at pass 4; ties_split: never exact
    if kind in ("none", "every_slot"):  # count 0: no key in bin 255; every slot: its lowest bin is exact
        row[:n] = torch.randn(n, generator=gen) * 3
        return row, 0 if kind == "none" else n, 1
    if kind == "huge_negative":  # top digit 0, shared with the -inf slot: exact only at pass 2
        row[:n] = -1.8e38 - 1.6e38 * spread(n, gen)
        return row, n, 2
    assert kind == "every_slot_top_digit_zero"  # prefix 0 at the exit: T = -1, the padding left out
    row[:] = -1.8e38 - 1.6e38 * spread(width, gen)
    return row, width, 1


def one_row(values: torch.Tensor, count: int, gen: torch.Generator):
    """``PageScores``, ``PolicyBatch``, count and newest page for one row without windows."""
    width = values.shape[0]
    table = torch.randperm(4 * width, generator=gen)[:width].int().unsqueeze(0)
    batch = one_row_batch(table, count)
    return (
        PageScores(values.unsqueeze(0)),
        batch,
        torch.tensor([count]),
        torch.tensor([-5], dtype=torch.int32),
    )


KINDS = [
    "top_digit",
    "second_digit",
    "negative",
    "last_digit",
    "ties_split",
    "ties_taken_whole",
    "none",
    "every_slot",
    "huge_negative",
    "every_slot_top_digit_zero",
]


@pytest.mark.parametrize("early_exit", [True, False])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("kind", KINDS)
def test_exit_after_the_exact_pass_writes_the_four_pass_pages(kind, width, early_exit, histograms):
    gen = torch.Generator().manual_seed(width + KINDS.index(kind))
    values, count, settles = crafted(kind, width, gen)
    scores, batch, counts, newest = one_row(values, count, gen)
    assert passes_to_settle(keys_of(values), count) == settles  # the rows are what they claim
    indptr, indices = run(scores, batch, counts, newest, radix=True, early_exit=early_exit)
    assert_page_lists(indptr, indices, stable_reference(scores, batch, counts, newest))
    if INTERPRETED:
        assert passes_run(histograms, width) == (settles if early_exit else 4)


@pytest.mark.parametrize("width", [40, 300, 2304])
def test_windows_of_shared_rows_settle_at_the_inf_bin(width, histograms):
    # Counts of exactly the +inf (sink and recent) slots: bin 255 of the first pass is exact
    # (or empty for count 0), whatever the summed scores; counts one more: the best finite slot.
    scores, batch, _, newest = case(4, width, 2, seed=width, windows=True)
    forced = (scores.ranked(batch) == float("inf")).sum(dim=1)
    for extra in (0, 1):
        histograms.clear()
        count = torch.minimum(forced + extra, batch.held - 1)
        indptr, indices = run(scores, batch, count, newest, radix=True)
        assert_page_lists(indptr, indices, stable_reference(scores, batch, count, newest))
        want = settling(scores, batch, count)
        if extra == 0:
            assert want == [1] * 4
        if INTERPRETED:
            assert passes_run(histograms, width) == sum(want)


@pytest.mark.parametrize("early_exit", [True, False])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("windows", [False, True])
@pytest.mark.parametrize(("rows", "width", "share"), [(4, 72, 2), (3, 300, 1), (2, 2304, 2), (2, 4100, 1)])
def test_random_rows_run_the_passes_of_the_rule(rows, width, share, windows, ties, early_exit, histograms):
    scores, batch, count, newest = case(rows, width, share, seed=width + 11, windows=windows, ties=ties)
    indptr, indices = run(scores, batch, count, newest, radix=True, early_exit=early_exit)
    want = (stable_reference if ties else reference)(scores, batch, count, newest)
    assert_page_lists(indptr, indices, want)
    settles = settling(scores, batch, count)
    if not ties:  # distinct random scores: some row stops before the fourth pass
        assert min(settles) < 4
    if INTERPRETED:
        assert passes_run(histograms, width) == (sum(settles) if early_exit else 4 * len(settles))
