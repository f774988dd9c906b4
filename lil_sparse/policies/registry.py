"""Every selection policy, by name. Adding one: a file, a line here, a row in the test matrix."""

from __future__ import annotations

from collections.abc import Mapping

from lil_sparse.options import POLICY_FIELDS, PolicyFields
from lil_sparse.policies.base import SelectionPolicy
from lil_sparse.policies.full import FullPolicy
from lil_sparse.policies.h2o import H2OPolicy
from lil_sparse.policies.infllm import InfLLMPolicy
from lil_sparse.policies.quest import QuestPolicy
from lil_sparse.policies.sink import SinkPolicy

POLICIES: dict[str, SelectionPolicy] = {
    policy.name: policy for policy in (FullPolicy(), SinkPolicy(), H2OPolicy(), QuestPolicy(), InfLLMPolicy())
}


def option_fields(policy: SelectionPolicy) -> PolicyFields:
    """The :class:`~lil_sparse.options.PolicyFields` a policy's class flags declare."""
    return PolicyFields(
        uses_budget=policy.uses_budget,
        reads_sink_tokens=policy.reads_sink_tokens,
        reads_recent_tokens=policy.reads_recent_tokens,
        has_dense_layers=policy.has_dense_layers,
    )


def check_in_step(policies: Mapping[str, SelectionPolicy], fields: Mapping[str, PolicyFields]) -> None:
    """Raise ``RuntimeError`` unless ``policies`` and the options' ``fields`` name the same
    policies in the same order with the same flags (options validation reads the table)."""
    if tuple(policies) != tuple(fields):
        raise RuntimeError(f"policy registry {tuple(policies)} differs from POLICY_FIELDS {tuple(fields)}")
    for name, policy in policies.items():
        if option_fields(policy) != fields[name]:
            raise RuntimeError(
                f"policy {name!r}: class flags {option_fields(policy)} differ from "
                f"lil_sparse.options.POLICY_FIELDS {fields[name]}"
            )


check_in_step(POLICIES, POLICY_FIELDS)


def get_policy(name: str) -> SelectionPolicy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"policy: unknown policy {name!r}; choose one of {', '.join(POLICIES)}") from None
