"""Sparse options against the engine's geometry: what ``full`` ignores and what it still refuses."""

from __future__ import annotations

import pytest

from lil_sparse.options import POLICY_FIELDS, SparseOptions
from lil_sparse.policies.quest import QuestPolicy
from lil_sparse.policies.registry import POLICIES, check_in_step, option_fields

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


def test_every_registered_policy_declares_the_fields_options_validate_by() -> None:
    # Options validate by POLICY_FIELDS (they cannot import the policies); each policy's class
    # flags must say the same, and the table's reading of each policy is spelled out here.
    for name, policy in POLICIES.items():
        assert option_fields(policy) == POLICY_FIELDS[name]
    assert {name for name, f in POLICY_FIELDS.items() if not f.uses_budget} == {"full"}
    assert {name for name, f in POLICY_FIELDS.items() if f.reads_sink_tokens} == {"sink", "infllm"}
    assert {name for name, f in POLICY_FIELDS.items() if f.reads_recent_tokens} == {"h2o", "infllm"}
    assert {name for name, f in POLICY_FIELDS.items() if f.has_dense_layers} == {"quest"}


def test_a_policy_whose_flags_disagree_with_the_options_table_is_refused() -> None:
    class QuestWithoutDenseLayers(QuestPolicy):
        has_dense_layers = False

    with pytest.raises(RuntimeError, match=r"^policy 'quest': class flags .* differ from"):
        check_in_step(dict(POLICIES, quest=QuestWithoutDenseLayers()), POLICY_FIELDS)
    with pytest.raises(RuntimeError, match="differs from POLICY_FIELDS"):
        check_in_step(dict(reversed(POLICIES.items())), POLICY_FIELDS)
    check_in_step(POLICIES, POLICY_FIELDS)  # the registry as it is passes


def test_infllm_sizes_its_automatic_recent_window_after_its_sink_pages_and_h2o_does_not() -> None:
    # Half of the budget left after the sink pages for the policy that keeps both windows (InfLLM),
    # half of the whole budget for H2O (no sink window): 8 pages, 1 sink page.
    assert SparseOptions(policy="infllm", budget_tokens=128, sink_tokens=4).recent_pages(PAGE) == 3
    assert SparseOptions(policy="h2o", budget_tokens=128, sink_tokens=4).recent_pages(PAGE) == 4


def test_dense_layers_at_the_model_depth_is_refused_for_quest_only() -> None:
    assert _error(SparseOptions(policy="quest", budget_tokens=64, dense_layers=LAYERS)) == (
        f"dense_layers: must be below the model's {LAYERS} layers for quest (with {LAYERS} dense layers "
        f"no layer would select pages; use policy 'full'), got {LAYERS}"
    )
    for policy in ("sink", "h2o", "infllm"):  # they do not read dense_layers
        SparseOptions(policy=policy, budget_tokens=64, dense_layers=LAYERS).validate_for(PAGE, LAYERS)
