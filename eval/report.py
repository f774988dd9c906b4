"""``lil-eval report``: regenerate ``docs/results/lil.md`` and its PNGs from saved records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from eval import plots, tables
from eval.analysis import (
    Arm,
    arms_by_dataset,
    grade_missing,
    guardian_outcomes,
    online_agreement,
    paired_indices,
)
from eval.answer_forcing import answer_forcing_table, answer_settings
from eval.dense import DENSE_ARM, is_dense
from eval.guardian_replay import GuardianSetting
from eval.records import SampleRecord, read_records
from eval.stats import paired_bootstrap, relative_change
from eval.sweep import meta_path


@dataclass(frozen=True, slots=True)
class ReportConfig:
    """``guardian`` is the setting of Table 1's Guardian columns; the grid draws the curve."""

    guardian: GuardianSetting = field(default_factory=lambda: GuardianSetting(250, 20))
    grid_intervals: tuple[int, ...] = (25, 50, 100, 250)
    grid_thresholds: tuple[int, ...] = (5, 10, 20, 40)
    bootstrap: int = 2000
    grade_workers: int = 0
    command: str = ""

    def __post_init__(self) -> None:
        if not self.grid_intervals or not self.grid_thresholds:
            raise ValueError("guardian_grid: needs at least one interval and one threshold")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap: must be >= 0, got {self.bootstrap}")

    def settings(self) -> list[GuardianSetting]:
        grid = [GuardianSetting(f, t) for f in self.grid_intervals for t in self.grid_thresholds]
        return grid if self.guardian in grid else [*grid, self.guardian]


def _metas(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(meta_path(p).read_text()) for p in paths if meta_path(p).is_file()]


def _run_section(
    records: list[SampleRecord], metas: list[dict[str, Any]], config: ReportConfig, paths: list[Path]
) -> str:
    models = sorted({r.model for r in records})
    devices = sorted({r.device for r in records})
    caps = sorted({r.max_new_tokens for r in records})
    lines = [
        f"- **Model**: {', '.join(models)}; **device**: {', '.join(devices)}; **attention backend**: "
        f"{', '.join(sorted({r.backend for r in records}))}; greedy decoding; "
        f"`max_new_tokens` = {', '.join(map(str, caps))}.",
        f"- **Samples**: {len(records)} records; problems per set: " + problems_ran(records) + ".",
    ]
    for meta in metas:
        admission = (
            "selected problems admitted before the time limit, each run to the end under every condition"
            if meta.get("admission_cut")
            else "selected problems finished every condition in the time limit; problems still running "
            "at the cut were dropped (the sweep then cut at completion, not admission)"
        )
        lines.append(
            f"- **Sweep** ({meta.get('date_utc', '?')}, {meta.get('sweep_wall_seconds', '?')} s, "
            f"{meta.get('generated_tokens', '?')} tokens, {meta.get('problems_run', '?')} of "
            f"{meta.get('problems_selected', '?')} {admission}; selection: "
            f"{meta.get('selection', 'exact (before the setting existed)')}):\n"
            f"  `{meta.get('command', '?')}`"
        )
        conditions = meta.get("config", {}).get("conditions", [])
        if conditions:
            lines.append(f"  - conditions: {', '.join(conditions)}")
        slices = meta.get("slices", [])
        if len(slices) > 1:
            lines.append(_slices_line(slices))
    report_command = config.command or "lil-eval report " + " ".join(str(p) for p in paths)
    lines.append(
        f"- **Report**: `{report_command}` ({datetime.now(timezone.utc).strftime('%Y-%m-%d')}); grading with "
        "math-verify; intervals are 95% paired bootstrap intervals over problems "
        f"({config.bootstrap} resamples), ± is one standard error."
    )
    return "\n".join(lines)


def _slices_line(slices: list[dict[str, Any]]) -> str:
    """A resumed sweep's slices: "run in 3 slices (`--resume`) from A to B; records added: 6*, 6, 3"
    with a star on each that did not finish."""
    added = [f"{s.get('records_added', '?')}{'' if s.get('finished') else '*'}" for s in slices]
    line = (
        f"  - run in {len(slices)} slices (`--resume`) from {slices[0].get('date_utc', '?')} to "
        f"{slices[-1].get('date_utc', '?')}; records added: {', '.join(added)}"
    )
    if any(not s.get("finished") for s in slices):
        line += " (*: did not finish, killed or failed; the records it wrote are kept)"
    return line


def problems_ran(records: list[SampleRecord]) -> str:
    """Which problems of each set ran, by their place in the file: "gsm8k: the first 85 in file
    order (positions 0-84)", or the exact positions and the holes when they are not a prefix."""
    positions: dict[str, set[int]] = {}
    for record in records:
        positions.setdefault(record.dataset, set()).add(record.problem_position)
    parts = []
    for dataset, places in sorted(positions.items()):
        if -1 in places:
            ids = {r.problem_id for r in records if r.dataset == dataset}
            parts.append(f"{dataset} {len(ids)} (file positions not recorded)")
            continue
        ordered = sorted(places)
        if ordered == list(range(len(ordered))):
            parts.append(
                f"{dataset}: the first {len(ordered)} in file order (0-based positions {_ranges(ordered)})"
            )
            continue
        holes = sorted(set(range(ordered[-1] + 1)) - places)
        parts.append(
            f"{dataset}: {len(ordered)} at positions {_ranges(ordered)}, NOT a prefix "
            f"(missing {_ranges(holes)})"
        )
    return "; ".join(parts)


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    spans: list[list[int]] = []
    for value in values:
        if spans and value == spans[-1][1] + 1:
            spans[-1][1] = value
        else:
            spans.append([value, value])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


CAPPED_WARNING = 0.25
"""Share of outputs stopped by ``max_new_tokens`` from which the verdict warns that lengths are
censored (a judgment: a quarter of the answers at the cap already hides much of a tail)."""


def _verdict(
    records: list[SampleRecord], by_dataset: dict[str, dict[Arm, dict[str, int]]], resamples: int
) -> str:
    """One sentence per policy: does it lengthen answers (the Lil inflation), pooled over sets."""
    sentences = []
    longer: list[str] = []
    shorter: list[str] = []
    for policy in (p for p in tables.POLICY_ORDER if not is_dense(p)):
        budgets = sorted({b for arms in by_dataset.values() for p, b in arms if p == policy})
        parts = []
        for budget in budgets:
            base: list[float] = []
            mine: list[float] = []
            for arms in by_dataset.values():
                if (policy, budget) in arms:
                    b, m = paired_indices(arms, (policy, budget))
                    base += [float(records[i].output_tokens) for i in b]
                    mine += [float(records[i].output_tokens) for i in m]
            e = paired_bootstrap(base, mine, relative_change, resamples)
            parts.append(f"{budget}: {e.value:+.0f}% [{e.low:+.0f}, {e.high:+.0f}]")
            if e.low > 0:
                longer.append(f"{policy}@{budget}")
            elif e.high < 0:
                shorter.append(f"{policy}@{budget}")
        if not parts:
            continue
        sentences.append(f"- **{policy}** length change vs full by budget: " + "; ".join(parts) + ".")
    if longer:
        headline = (
            f"**Yes, for some arms**: answers are significantly longer than dense under {', '.join(longer)}."
        )
    else:
        headline = "**No**: no policy and budget gives significantly longer answers than dense attention."
    if shorter:
        headline += f" Significantly *shorter* under {', '.join(shorter)}."
    capped = sum(r.finish_reason == "length" for r in records) / len(records)
    if capped >= CAPPED_WARNING:
        headline += (
            f" **Read with care:** {capped:.0%} of all outputs stopped at `max_new_tokens`, so their"
            " lengths are the cap, not the answer's: inflation past the cap cannot show (rerun with a"
            " larger `--max-new-tokens`)."
        )
    return "\n".join([headline, "", *sentences])


def write_report(paths: list[Path], out: Path, config: ReportConfig) -> Path:
    """Read the records, grade what is ungraded, write ``out/lil.md`` and the PNGs; return the .md path."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"records: no such file: {', '.join(missing)}")
    records = grade_missing(list(read_records(*paths)), config.grade_workers)
    if not records:
        raise ValueError("records: the files hold no records")
    models = sorted({r.model for r in records})
    if len(models) > 1:
        # Arms are compared by problem against the dense arm; pairing across models would mix them.
        raise ValueError(
            f"records: one model per report (got {', '.join(models)}); write one --out per model"
        )
    caps = sorted({r.max_new_tokens for r in records})
    if len(caps) > 1:
        # A length capped at 16 tokens and one capped at 64 are not the same measurement, and
        # a problem's records under both would pair arbitrarily.
        raise ValueError(
            f"records: one max_new_tokens per report (got {', '.join(map(str, caps))}); report each"
            " sweep on its own --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    by_dataset = arms_by_dataset(records)
    forcing = answer_settings(records)
    settings = config.settings() + [s for s in forcing if s not in config.settings()]
    outcomes = guardian_outcomes(records, settings, config.grade_workers)
    chosen = outcomes[config.guardian]
    grid = {s: outcomes[s] for s in config.settings()}
    dense = {d: list(arms.get(DENSE_ARM, {}).values()) for d, arms in by_dataset.items()}
    pooled_dense = [i for indices in dense.values() for i in indices]

    sections = [
        "# The Lil study on lil-sparse: answer length, accuracy, JCT and Guardian",
        "Generated by `lil-eval report` from the saved records; do not edit by hand (see docs/eval.md).",
        "## Run",
        _run_section(records, _metas(paths), config, paths),
        "## Do sparse budgets lengthen answers (the Lil inflation)?",
        "Paired by problem, all sets pooled. A 95% interval entirely above 0 means longer answers "
        "under sparsity (the paper's inflation); entirely below 0 means shorter.",
        _verdict(records, by_dataset, config.bootstrap),
        tables.pooled_length_table(records, by_dataset, config.bootstrap),
    ]
    for dataset in sorted(by_dataset):
        sections += [
            f"## {dataset}: policies and budgets (the paper's Table 1)",
            tables.dataset_table(records, by_dataset[dataset], chosen, config.guardian, config.bootstrap),
        ]
    sections.append(
        "## Guardian on dense attention (the paper's Table 2), replayed offline on the `full` outputs"
    )
    for dataset in sorted(dense):
        if dense[dataset]:
            sections += [
                f"### {dataset}",
                tables.guardian_dense_table(records, dense[dataset], grid, config.bootstrap),
            ]
    if len(dense) > 1:
        sections += [
            "### all sets pooled",
            tables.guardian_dense_table(records, pooled_dense, grid, config.bootstrap),
        ]
    if forcing:
        sections += [
            "## Guardian stop action `answer` (online) against truncation (replayed on the dense run)",
            "Each answer-forcing run is paired with its problem's dense run; truncation at the same "
            "(f, t) is replayed on that dense run. All sets pooled; the forced prompt and the answer "
            "count as generated tokens.",
            answer_forcing_table(records, outcomes, config.bootstrap),
        ]
    agreements = online_agreement(records)
    if agreements:
        sections += [
            "## Guardian online (in the engine) against offline replay",
            tables.agreement_table(agreements),
        ]
    figures = [
        plots.length_vs_budget(records, by_dataset, out),
        plots.accuracy_vs_budget(records, by_dataset, out),
        plots.guardian_curve(records, dense, grid, out),
    ]
    examples = _long_examples(records, by_dataset)
    if examples:
        figures.append(plots.compressed_vs_tokens(records, examples, out))
    sections.append("## Figures")
    sections += [f"![{f.stem}]({f.name})" for f in figures]
    path = out / "lil.md"
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path


def _long_examples(
    records: list[SampleRecord], by_dataset: dict[str, dict[Arm, dict[str, int]]], count: int = 3
) -> list[list[int]]:
    """The problems with the longest dense outputs, each with the smallest budget of every policy."""
    candidates = []
    for arms in by_dataset.values():
        full = arms.get(DENSE_ARM, {})
        smallest = {p: min(b for q, b in arms if q == p) for p, _ in arms if not is_dense(p)}
        for problem_id, index in full.items():
            group = [index] + [
                arms[(p, b)][problem_id] for p, b in sorted(smallest.items()) if problem_id in arms[(p, b)]
            ]
            candidates.append((records[index].output_tokens, group))
    candidates.sort(key=lambda c: -c[0])
    return [group for _, group in candidates[:count]]
