"""The study's dense baseline, found by the options' flags rather than by name: the policy that
attends every held page whatever the budget (``full``), the one arm that has no budget."""

from __future__ import annotations

from lil_sparse.options import POLICY_FIELDS


def is_dense(policy: str) -> bool:
    """Whether ``policy`` attends every held page whatever the budget (``full``); raises
    ``KeyError`` for a name no policy has."""
    return not POLICY_FIELDS[policy].uses_budget


_DENSE = [name for name in POLICY_FIELDS if is_dense(name)]
if len(_DENSE) != 1:  # the study has one baseline arm
    raise RuntimeError(f"eval: expected one policy without a budget, found {_DENSE}")

DENSE_POLICY: str = _DENSE[0]
"""The dense baseline's policy name (``full``)."""
DENSE_ARM: tuple[str, int] = (DENSE_POLICY, 0)
"""The dense baseline's arm, ``(policy, budget_tokens)``: its budget is 0 by convention."""
