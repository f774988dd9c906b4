"""Every selection policy, by name. Adding one: a file, a line here, a row in the test matrix."""

from __future__ import annotations

from lil_sparse.options import POLICY_NAMES
from lil_sparse.policies.base import SelectionPolicy
from lil_sparse.policies.full import FullPolicy
from lil_sparse.policies.h2o import H2OPolicy
from lil_sparse.policies.infllm import InfLLMPolicy
from lil_sparse.policies.quest import QuestPolicy
from lil_sparse.policies.sink import SinkPolicy

POLICIES: dict[str, SelectionPolicy] = {
    policy.name: policy for policy in (FullPolicy(), SinkPolicy(), H2OPolicy(), QuestPolicy(), InfLLMPolicy())
}

if tuple(POLICIES) != POLICY_NAMES:  # keep options validation and the registry in step
    raise RuntimeError(f"policy registry {tuple(POLICIES)} differs from POLICY_NAMES {POLICY_NAMES}")


def get_policy(name: str) -> SelectionPolicy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"policy: unknown policy {name!r}; choose one of {', '.join(POLICIES)}") from None
