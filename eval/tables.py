"""Markdown tables: the paper's Table 1 (per dataset), Table 2 (Guardian on dense attention),
the pooled length change per arm, and the online-vs-replay check."""

from __future__ import annotations

import math

import numpy as np

from eval.analysis import Arm, GuardianOutcome, OnlineAgreement, paired_indices
from eval.dense import is_dense
from eval.guardian_replay import GuardianSetting, stop_chances
from eval.records import SampleRecord
from eval.stats import Estimate, difference_of_means, mean_with_se, paired_bootstrap, relative_change, saving
from lil_sparse.options import POLICY_NAMES

POLICY_ORDER = POLICY_NAMES  # the dense baseline first


def sorted_arms(arms: list[Arm]) -> list[Arm]:
    return sorted(arms, key=lambda a: (POLICY_ORDER.index(a[0]) if a[0] in POLICY_ORDER else 99, a[1]))


def _fmt(value: float, digits: int = 1) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def _with_se(e: Estimate, digits: int = 1) -> str:
    return _fmt(e.value, digits) + ("" if math.isnan(e.se) else f" ± {_fmt(e.se, digits)}")


def _with_ci(e: Estimate, digits: int = 1, signed: bool = True) -> str:
    if math.isnan(e.value):
        return "–"
    value = f"{e.value:+.{digits}f}" if signed else f"{e.value:.{digits}f}"
    return value if math.isnan(e.low) else f"{value} [{e.low:+.{digits}f}, {e.high:+.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def dataset_table(
    records: list[SampleRecord],
    arms: dict[Arm, dict[str, int]],
    outcomes: list[GuardianOutcome],
    setting: GuardianSetting,
    resamples: int,
) -> str:
    """Table 1 for one dataset: every arm against ``full`` on the problems both ran."""
    rows = []
    for arm in sorted_arms(list(arms)):
        base, mine = paired_indices(arms, arm)
        if not mine:
            continue
        lengths = [float(records[i].output_tokens) for i in mine]
        correct = [float(bool(records[i].correct)) for i in mine]
        base_lengths = [float(records[i].output_tokens) for i in base]
        base_correct = [float(bool(records[i].correct)) for i in base]
        service = np.mean([records[i].service_seconds for i in mine])
        base_service = np.mean([records[i].service_seconds for i in base])
        kept = [float(outcomes[i].tokens_kept) for i in mine]
        guarded = [float(outcomes[i].correct) for i in mine]
        is_full = is_dense(arm[0])
        rows.append(
            [
                arm[0],
                "–" if is_full else str(arm[1]),
                str(len(mine)),
                _with_se(Estimate(mean_with_se(correct).value * 100, mean_with_se(correct).se * 100)),
                _with_se(mean_with_se(lengths), 0),
                "0 (baseline)"
                if is_full
                else _with_ci(paired_bootstrap(base_lengths, lengths, relative_change, resamples)),
                "0 (baseline)"
                if is_full
                else _with_ci(_pp(paired_bootstrap(base_correct, correct, difference_of_means, resamples))),
                _fmt(float(service / base_service), 2) if base_service else "–",
                _fmt(100 * sum(records[i].finish_reason == "length" for i in mine) / len(mine), 0),
                _with_ci(paired_bootstrap(lengths, kept, saving, resamples), signed=False),
                _with_ci(_pp(paired_bootstrap(correct, guarded, difference_of_means, resamples))),
            ]
        )
    header = [
        "policy",
        "budget",
        "n",
        "accuracy % ± SE",
        "mean tokens ± SE",
        "Δ length vs full % [95% CI]",
        "Δ accuracy vs full pp [95% CI]",
        "service time vs full",
        "hit cap %",
        f"Guardian saving % ({setting.label()})",
        "Guardian Δ accuracy pp",
    ]
    return _table(header, rows)


def _pp(e: Estimate) -> Estimate:
    return Estimate(e.value * 100, e.se * 100, e.low * 100, e.high * 100)


def guardian_dense_table(
    records: list[SampleRecord],
    indices: list[int],
    outcomes: dict[GuardianSetting, list[GuardianOutcome]],
    resamples: int,
) -> str:
    """Table 2: Guardian replayed on the dense (``full``) outputs, every setting of the grid.

    "checks that can stop" is the mean over outputs of :func:`stop_chances`: 0 for a setting whose
    second check comes after every output's end, where "stopped %" is 0 because no check could
    stop, not because every check saw the text still growing."""
    rows = []
    lengths = [float(records[i].output_tokens) for i in indices]
    correct = [float(bool(records[i].correct)) for i in indices]
    for setting, per_record in outcomes.items():
        kept = [float(per_record[i].tokens_kept) for i in indices]
        guarded = [float(per_record[i].correct) for i in indices]
        stopped = sum(per_record[i].stop_step is not None for i in indices)
        chances = [stop_chances(records[i].output_tokens, setting.interval_tokens) for i in indices]
        rows.append(
            [
                str(setting.interval_tokens),
                str(setting.threshold_bytes),
                str(len(indices)),
                _fmt(float(np.mean(chances)), 1),
                _fmt(100 * stopped / len(indices), 0),
                _with_ci(paired_bootstrap(lengths, kept, saving, resamples), signed=False),
                _fmt(100 * float(np.mean(correct))),
                _fmt(100 * float(np.mean(guarded))),
                _with_ci(_pp(paired_bootstrap(correct, guarded, difference_of_means, resamples))),
            ]
        )
    header = [
        "interval f",
        "threshold t (bytes)",
        "n",
        "checks that can stop (mean)",
        "stopped %",
        "token saving % [95% CI]",
        "accuracy dense %",
        "accuracy with Guardian %",
        "Δ accuracy pp [95% CI]",
    ]
    return _table(header, rows)


def pooled_length_table(
    records: list[SampleRecord], by_dataset: dict[str, dict[Arm, dict[str, int]]], resamples: int
) -> str:
    """Length change vs full per arm, all datasets pooled (problems paired within their set)."""
    arms = sorted_arms(sorted({a for arms in by_dataset.values() for a in arms if not is_dense(a[0])}))
    rows = []
    for arm in arms:
        base: list[float] = []
        mine: list[float] = []
        for dataset_arms in by_dataset.values():
            if arm in dataset_arms:
                b, m = paired_indices(dataset_arms, arm)
                base += [float(records[i].output_tokens) for i in b]
                mine += [float(records[i].output_tokens) for i in m]
        estimate = paired_bootstrap(base, mine, relative_change, resamples)
        verdict = "longer" if estimate.low > 0 else "shorter" if estimate.high < 0 else "no clear change"
        rows.append(
            [
                arm[0],
                str(arm[1]),
                str(len(mine)),
                _fmt(float(np.mean(base)), 0),
                _fmt(float(np.mean(mine)), 0),
                _with_ci(estimate),
                verdict,
            ]
        )
    header = [
        "policy",
        "budget",
        "n",
        "mean tokens, full",
        "mean tokens, policy",
        "Δ length % [95% CI]",
        "verdict",
    ]
    return _table(header, rows)


def agreement_table(agreements: list[OnlineAgreement]) -> str:
    rows = [
        [
            a.setting.label(),
            str(a.runs),
            f"{a.sizes_equal}/{a.runs}",
            f"{a.stops_equal}/{a.runs}",
            f"{a.dense_stops_equal}/{a.dense_prefix}",
        ]
        for a in agreements
    ]
    header = [
        "online setting",
        "runs",
        "check sizes equal to replay",
        "stop step equal to replay",
        "stop equal to replay of the dense output (same-token runs)",
    ]
    return _table(header, rows)
