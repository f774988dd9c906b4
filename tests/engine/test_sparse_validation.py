"""Sparse options against the engine's geometry: what ``full`` ignores and what it still refuses."""

from __future__ import annotations

import pytest

from lil_sparse.options import SparseOptions

PAGE = 16
LAYERS = 2


def _error(options: SparseOptions) -> str:
    with pytest.raises(ValueError) as raised:
        options.validate_for(PAGE, LAYERS)
    return str(raised.value)


@pytest.mark.parametrize("policy", ["full", "sink", "h2o", "quest", "infllm"])
@pytest.mark.parametrize("budget", [-1, 0, 1, 8, 15])
def test_every_budget_below_one_page_gets_one_message(policy: str, budget: int) -> None:
    # 0 and a positive budget below a page once read differently (">= 1" against "below one
    # page"); both now name the field, the value, the page size and the smallest valid budget.
    assert _error(SparseOptions(policy=policy, budget_tokens=budget)) == (
        f"budget_tokens: must be >= 16 (one page of 16 tokens), got {budget}"
    )


def test_the_smallest_budget_the_message_names_is_accepted() -> None:
    assert SparseOptions(policy="quest", budget_tokens=16).budget_pages(PAGE) == 1
    assert SparseOptions(policy="quest", budget_tokens=31).budget_pages(PAGE) == 1
    with pytest.raises(ValueError, match=r"^budget_tokens: must be >= 32 \(one page of 32 tokens\), got 16$"):
        SparseOptions(policy="quest", budget_tokens=16).budget_pages(32)


def test_full_ignores_fields_that_only_sparse_policies_read() -> None:
    # Valid in themselves, wrong only for a policy that reads them: full accepts them.
    SparseOptions(
        policy="full", budget_tokens=16, sink_tokens=64, recent_tokens=64, dense_layers=9
    ).validate_for(PAGE, LAYERS)


def test_sink_budget_too_small_for_default_sink_names_what_to_change() -> None:
    assert _error(SparseOptions(policy="sink", budget_tokens=16)) == (
        "budget_tokens: 16 (1 page of 16 tokens) leaves no room for the 4 sink tokens (1 page) plus "
        "the newest page; raise budget_tokens to at least 32 or lower sink_tokens"
    )
    SparseOptions(policy="sink", budget_tokens=32).validate_for(PAGE, LAYERS)  # the suggested fix works
    SparseOptions(policy="sink", budget_tokens=16, sink_tokens=0).validate_for(PAGE, LAYERS)


def test_recent_window_too_large_names_both_fields() -> None:
    assert _error(SparseOptions(policy="h2o", budget_tokens=32, recent_tokens=48)) == (
        "recent_tokens: 48 recent tokens do not fit the budget of 2 pages; "
        "lower recent_tokens (0: automatic) or raise budget_tokens"
    )
