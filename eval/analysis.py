"""From records to what the tables and plots show: grades, Guardian outcomes, per-arm groups."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from eval.dense import DENSE_ARM, is_dense
from eval.grading import grade_many
from eval.guardian_replay import GuardianSetting, replay_stop_step, truncated_text
from eval.records import SampleRecord, Trajectory

Arm = tuple[str, int]  # (policy, budget_tokens); the dense baseline is eval.dense.DENSE_ARM


@dataclass(frozen=True, slots=True)
class GuardianOutcome:
    """One record replayed under one setting: tokens it would have kept, and its grade then."""

    stop_step: int | None
    tokens_kept: int
    correct: bool


def grade_missing(records: list[SampleRecord], workers: int = 0) -> list[SampleRecord]:
    """Records made without math-verify carry ``correct=None``; grade those."""
    missing = [i for i, r in enumerate(records) if r.correct is None]
    grades = grade_many([(records[i].output_text, records[i].gold) for i in missing], workers)
    graded = list(records)
    for i, grade in zip(missing, grades, strict=True):
        graded[i] = replace(records[i], correct=grade.correct, extracted_answer=grade.extracted)
    return graded


def guardian_outcomes(
    records: list[SampleRecord], settings: list[GuardianSetting], workers: int = 0
) -> dict[GuardianSetting, list[GuardianOutcome]]:
    """Replay every setting on every record (which must have a trajectory). A stopped output is
    graded as it stood at the stop; truncations shared by several settings are graded once."""
    stops = {s: [replay_stop_step(_trajectory(r), r.output_tokens, s) for r in records] for s in settings}
    needed = sorted({(i, step) for s in settings for i, step in enumerate(stops[s]) if step is not None})
    pairs = [
        (truncated_text(records[i].output_text, _trajectory(records[i]), step), records[i].gold)
        for i, step in needed
    ]
    grades = dict(zip(needed, grade_many(pairs, workers), strict=True))
    outcomes: dict[GuardianSetting, list[GuardianOutcome]] = {}
    for setting in settings:
        outcomes[setting] = [
            GuardianOutcome(None, r.output_tokens, bool(r.correct))
            if step is None
            else GuardianOutcome(step, step, grades[(i, step)].correct)
            for i, (r, step) in enumerate(zip(records, stops[setting], strict=True))
        ]
    return outcomes


def _trajectory(record: SampleRecord) -> Trajectory:
    if record.trajectory is None:
        raise ValueError(f"trajectory: record {record.problem_id} ({record.policy}) has none to replay")
    return record.trajectory


def arms_by_dataset(records: list[SampleRecord]) -> dict[str, dict[Arm, dict[str, int]]]:
    """dataset -> arm -> problem id -> record index, for records run without online Guardian."""
    table: dict[str, dict[Arm, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for index, record in enumerate(records):
        if not record.guardian.enabled:
            table[record.dataset][(record.policy, record.budget_tokens)][record.problem_id] = index
    return {dataset: dict(arms) for dataset, arms in table.items()}


def paired_indices(arms: dict[Arm, dict[str, int]], arm: Arm) -> tuple[list[int], list[int]]:
    """Record indices of ``full`` and of ``arm`` for the problems both ran, in the same order."""
    full, other = arms.get(DENSE_ARM, {}), arms[arm]
    shared = sorted(set(full) & set(other))
    return [full[p] for p in shared], [other[p] for p in shared]


@dataclass(frozen=True, slots=True)
class OnlineAgreement:
    """Online Guardian (in the engine) against offline replay of the same output.

    ``sizes_equal``: every online check's compressed size equals the replayed one.
    ``stops_equal``: the online stop step equals the replay over the online output.
    ``dense_prefix`` / ``dense_stops_equal``: among online runs whose output is a prefix of the
    dense run's (same tokens so far; batched GPU arithmetic can make greedy runs diverge), how
    many stopped exactly where replaying the dense output says.
    """

    setting: GuardianSetting
    runs: int
    sizes_equal: int
    stops_equal: int
    dense_prefix: int
    dense_stops_equal: int


def online_agreement(records: list[SampleRecord]) -> list[OnlineAgreement]:
    dense = {(r.dataset, r.problem_id): r for r in records if is_dense(r.policy) and not r.guardian.enabled}
    grouped: dict[GuardianSetting, list[SampleRecord]] = defaultdict(list)
    for r in records:
        # Answer-forcing runs continue past the stop, so only truncating runs replay end to end.
        if r.guardian.enabled and is_dense(r.policy) and r.guardian.action == "truncate":
            grouped[GuardianSetting(r.guardian.interval_tokens, r.guardian.threshold_bytes)].append(r)
    results = []
    for setting, online in grouped.items():
        sizes_equal = stops_equal = prefix = dense_equal = 0
        for r in online:
            trajectory = _trajectory(r)
            replayed = [
                trajectory.compressed_bytes[k // trajectory.base_interval]
                for k in r.guardian.checks_generated_tokens
            ]
            sizes_equal += replayed == list(r.guardian.checks_compressed_bytes)
            # An output that Guardian ended has its stop check on its last token; replay must see it.
            end = r.output_tokens + 1 if r.finish_reason == "early_stop" else r.output_tokens
            stops_equal += replay_stop_step(trajectory, end, setting) == r.guardian.stop_step
            twin = dense.get((r.dataset, r.problem_id))
            if twin is not None and twin.output_text.startswith(r.output_text):
                prefix += 1
                dense_equal += (
                    replay_stop_step(_trajectory(twin), twin.output_tokens, setting) == r.guardian.stop_step
                )
        results.append(OnlineAgreement(setting, len(online), sizes_equal, stops_equal, prefix, dense_equal))
    return results
