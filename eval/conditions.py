"""What a sweep runs: which problems, under which (policy, budget, online Guardian) conditions."""

from __future__ import annotations

from dataclasses import dataclass

from eval.dense import DENSE_POLICY, is_dense
from eval.guardian_replay import GuardianSetting
from lil_sparse.options import (
    POLICY_NAMES,
    GuardianOptions,
    RequestOptions,
    SamplingOptions,
    SparseOptions,
    StoppingOptions,
)


@dataclass(frozen=True, slots=True)
class Condition:
    """One arm of the study. ``budget_tokens`` is 0 for ``full``; ``guardian`` None is off.
    ``guardian_action`` is what an online Guardian stop does (``truncate`` or ``answer``, see
    :mod:`lil_sparse.guardian.answer`); ``answer_max_tokens`` bounds a forced answer."""

    policy: str
    budget_tokens: int
    guardian: GuardianSetting | None = None
    guardian_action: str = "truncate"
    answer_max_tokens: int = 32

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise ValueError(
                f"policy: unknown policy {self.policy!r}; choose one of {', '.join(POLICY_NAMES)}"
            )
        if is_dense(self.policy) != (self.budget_tokens == 0):
            raise ValueError(
                f"budget_tokens: must be 0 exactly for policy {DENSE_POLICY}, got {self.budget_tokens}"
            )
        if self.budget_tokens < 0:
            raise ValueError(f"budget_tokens: must be >= 0, got {self.budget_tokens}")
        GuardianOptions(action=self.guardian_action, answer_max_tokens=self.answer_max_tokens)  # type: ignore[arg-type]

    def request_options(self, max_new_tokens: int) -> RequestOptions:
        """Greedy decoding with this condition's sparsity and Guardian (the engine's defaults for
        sink, recent window and dense layers)."""
        sparse = (
            SparseOptions(policy=self.policy)
            if is_dense(self.policy)
            else SparseOptions(policy=self.policy, budget_tokens=self.budget_tokens)
        )
        guardian = (
            GuardianOptions(
                enabled=True,
                interval_tokens=self.guardian.interval_tokens,
                threshold_bytes=self.guardian.threshold_bytes,
                action=self.guardian_action,  # type: ignore[arg-type]
                answer_max_tokens=self.answer_max_tokens,
            )
            if self.guardian
            else GuardianOptions()
        )
        return RequestOptions(
            sampling=SamplingOptions(temperature=0.0),
            stopping=StoppingOptions(max_new_tokens=max_new_tokens),
            sparse=sparse,
            guardian=guardian,
        )

    def label(self) -> str:
        name = self.policy if is_dense(self.policy) else f"{self.policy}@{self.budget_tokens}"
        if not self.guardian:
            return name
        action = f", answer {self.answer_max_tokens}" if self.guardian_action == "answer" else ""
        return name + f" + guardian({self.guardian.label()}{action})"


def build_conditions(
    policies: tuple[str, ...],
    budgets: tuple[int, ...],
    online_guardian: tuple[GuardianSetting, ...] = (),
    answer_guardian: tuple[GuardianSetting, ...] = (),
    answer_max_tokens: int = 32,
) -> list[Condition]:
    """``full`` once (it has no budget), every other policy at every budget, then ``full`` with
    each online Guardian setting (the check that online stops equal offline replay), then
    ``full`` with each answer-forcing setting (a stop forces an answer of ``answer_max_tokens``)."""
    if not policies:
        raise ValueError("policies: name at least one policy")
    if not all(policy in POLICY_NAMES for policy in policies):
        unknown = [policy for policy in policies if policy not in POLICY_NAMES]
        raise ValueError(f"policy: unknown policy {unknown[0]!r}; choose one of {', '.join(POLICY_NAMES)}")
    if any(not is_dense(policy) for policy in policies) and not budgets:
        raise ValueError("budgets: sparse policies need at least one budget")
    conditions = [Condition(DENSE_POLICY, 0)] if DENSE_POLICY in policies else []
    conditions += [Condition(p, b) for p in policies if not is_dense(p) for b in budgets]
    conditions += [Condition(DENSE_POLICY, 0, setting) for setting in online_guardian]
    conditions += [Condition(DENSE_POLICY, 0, s, "answer", answer_max_tokens) for s in answer_guardian]
    return conditions
