"""PNG figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from eval.analysis import Arm, GuardianOutcome, paired_indices
from eval.dense import DENSE_ARM, DENSE_POLICY, is_dense
from eval.guardian_replay import GuardianSetting
from eval.records import SampleRecord
from eval.stats import mean_with_se
from eval.tables import POLICY_ORDER


def _per_budget(
    records: list[SampleRecord],
    by_dataset: dict[str, dict[Arm, dict[str, int]]],
    path: Path,
    value: Callable[[SampleRecord], float],
    ylabel: str,
) -> Path:
    datasets = sorted(by_dataset)
    figure, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        arms = by_dataset[dataset]
        if DENSE_ARM in arms:
            full = mean_with_se([value(records[i]) for i in arms[DENSE_ARM].values()])
            axis.axhline(full.value, color="black", linestyle="--", label=DENSE_POLICY)
            axis.axhspan(full.value - full.se, full.value + full.se, color="black", alpha=0.08)
        for policy in (p for p in POLICY_ORDER if not is_dense(p)):
            budgets = sorted(b for p, b in arms if p == policy)
            if not budgets:
                continue
            estimates = [
                mean_with_se([value(records[i]) for i in paired_indices(arms, (policy, b))[1]])
                for b in budgets
            ]
            axis.errorbar(
                budgets,
                [e.value for e in estimates],
                yerr=[e.se for e in estimates],
                marker="o",
                capsize=3,
                label=policy,
            )
        axis.set_xscale("log", base=2)
        axis.set_title(f"{dataset} (n={len(arms.get(('full', 0), {}))})")
        axis.set_xlabel("budget (KV tokens per step)")
        axis.set_ylabel(ylabel)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def length_vs_budget(
    records: list[SampleRecord], by_dataset: dict[str, dict[Arm, dict[str, int]]], out: Path
) -> Path:
    return _per_budget(
        records,
        by_dataset,
        out / "length_vs_budget.png",
        lambda r: r.output_tokens,
        "mean output tokens (± SE)",
    )


def accuracy_vs_budget(
    records: list[SampleRecord], by_dataset: dict[str, dict[Arm, dict[str, int]]], out: Path
) -> Path:
    return _per_budget(
        records,
        by_dataset,
        out / "accuracy_vs_budget.png",
        lambda r: 100.0 * bool(r.correct),
        "accuracy % (± SE)",
    )


def guardian_curve(
    records: list[SampleRecord],
    dense_by_dataset: dict[str, list[int]],
    outcomes: dict[GuardianSetting, list[GuardianOutcome]],
    out: Path,
) -> Path:
    """Token saving against accuracy change for every (interval, threshold) on dense outputs."""
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    for dataset, indices in sorted(dense_by_dataset.items()):
        points = []
        for setting, per_record in outcomes.items():
            total = sum(records[i].output_tokens for i in indices)
            kept = sum(per_record[i].tokens_kept for i in indices)
            change = np.mean(
                [float(per_record[i].correct) - float(bool(records[i].correct)) for i in indices]
            )
            points.append((100 * (1 - kept / total) if total else 0.0, 100 * change, setting))
        points.sort(key=lambda p: p[0])
        axis.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker="o",
            linestyle="-",
            alpha=0.8,
            label=dataset,
        )
    axis.axhline(0, color="black", linewidth=0.8)
    axis.axhline(-2, color="grey", linestyle=":", linewidth=0.8, label="-2 pp (paper's bound)")
    axis.set_xlabel("tokens saved by Guardian % (dense outputs)")
    axis.set_ylabel("accuracy change (pp)")
    axis.set_title("Guardian grid: interval x threshold, replayed offline")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = out / "guardian_tradeoff.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def compressed_vs_tokens(records: list[SampleRecord], examples: list[list[int]], out: Path) -> Path:
    """Fig. 2/3 of the paper: compressed size of the sequence as it grows, per arm, for a few
    problems (one panel each; each line one arm)."""
    figure, axes = plt.subplots(1, len(examples), figsize=(4.6 * len(examples), 3.6), squeeze=False)
    for axis, indices in zip(axes[0], examples, strict=True):
        for i in indices:
            r = records[i]
            if r.trajectory is None:
                continue
            tokens = np.arange(len(r.trajectory.compressed_bytes)) * r.trajectory.base_interval
            label = r.policy if is_dense(r.policy) else f"{r.policy}@{r.budget_tokens}"
            axis.plot(tokens, r.trajectory.compressed_bytes, label=f"{label} ({r.output_tokens} tok)")
        first = records[indices[0]]
        axis.set_title(f"{first.dataset} {first.problem_id}", fontsize=9)
        axis.set_xlabel("generated tokens")
        axis.set_ylabel("zlib bytes of prompt + output")
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = out / "compressed_vs_tokens.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
