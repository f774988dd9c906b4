"""bench/targets.py's speed-T7 (a mixed batch against its rows' single-policy costs), by hand and
against the committed report, and that report as a whole against what bench/targets.py writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.targets import evaluate, report, t7_line, t7_ratio

REPORT = Path(__file__).resolve().parents[2] / "docs" / "bench" / "decode_targets_llama8b.json"
POLICIES = ("full", "sink", "h2o", "quest", "infllm")


def runs(mixed_ms: float, fixed_30: float, fixed_8: float | None, singles: dict[str, float]) -> dict:
    out = {
        "mixed|llama8b|32768|6": {"tbt_ms": mixed_ms, "graph_replays": 20, "steps": 20, "eager_steps": 0},
        "mixed-base|llama8b|256|30": {"tbt_ms": fixed_30},
    }
    if fixed_8 is not None:
        out["mixed-base|llama8b|256|8"] = {"tbt_ms": fixed_8}
    for policy, ms in singles.items():
        out[f"llama8b|32768|8|{policy}|{0 if policy == 'full' else 4096}"] = {"tbt_ms": ms}
    return out


def test_t7_ratio_takes_each_batch_sizes_fixed_cost():
    singles = [{"tbt_ms": ms} for ms in (12.0, 5.0, 6.0, 7.0, 6.5)]  # 36.5 ms in all
    # One fixed cost (5 ms) for both: 5 + (36.5 - 25) * 6 / 8 = 13.625 ms.
    assert t7_ratio(15.0, 5.0, None, singles, 6) == pytest.approx((15.0 / 13.625, 13.625))
    # A faster 8-row fixed cost (4.5 ms) leaves each row more of its step: 5 + 14 * 0.75 = 15.5.
    assert t7_ratio(15.0, 5.0, 4.5, singles, 6) == pytest.approx((15.0 / 15.5, 15.5))


def test_t7_line_reports_both_and_decides_by_the_batch_sizes_own_fixed_costs(capsys):
    singles = dict(zip(POLICIES, (12.0, 5.0, 6.0, 7.0, 6.5), strict=True))
    text = t7_line(runs(16.5, 5.0, 4.5, singles), None)
    assert text.startswith("TARGET MET speed-T7 16.50 ms = 1.06x the rows' single-policy costs (15.50 ms")
    assert "fixed costs 4.50 ms at 8 rows and 5.00 at 30; 1.21x with one fixed cost for both" in text
    missed = t7_line(runs(18.0, 5.0, 4.5, singles), None)
    assert missed.startswith("TARGET MISSED speed-T7 18.00 ms = 1.16x")


def test_t7_line_without_an_8_row_fixed_cost_takes_one_fixed_cost_for_both():
    """Reports before 2026-12-01 02:30 UTC measured only the mixed batch's fixed cost."""
    singles = dict(zip(POLICIES, (12.0, 5.0, 6.0, 7.0, 6.5), strict=True))
    text = t7_line(runs(15.0, 5.0, None, singles), None)
    assert text.startswith("TARGET MET speed-T7 15.00 ms = 1.10x the rows' single-policy costs (13.62 ms")
    assert "and the 5.00 ms fixed cost" in text


def test_the_committed_report_prints_the_t7_line_its_json_gives():
    """docs/bench/decode_targets.md's speed-T7 line is what bench/targets.py computes from the
    committed JSON (the 2026-12-02 03:08 report: 1.03x, each batch size's own fixed cost)."""
    report = json.loads(REPORT.read_text())["runs"]
    printed = [
        line.strip()
        for line in (REPORT.parent / "decode_targets.md").read_text().splitlines()
        if "speed-T7" in line and "TARGET" in line
    ]
    assert printed == [t7_line(report, None)]
    assert printed[0].startswith("TARGET MET speed-T7 16.16 ms = 1.03x the rows' single-policy costs")
    assert "(15.73 ms from the five batch-8 steps" in printed[0]


def test_the_committed_report_is_what_bench_targets_writes_from_its_json():
    """docs/bench/decode_targets.md, every line (header, target lines, the table), is
    ``bench/targets.py --out`` over the committed JSON files in the report's order: a hand edit
    or a generator change that the report does not carry fails here."""
    bench_dir = REPORT.parent
    parts = [
        dict(json.loads((bench_dir / name).read_text()), results_file=name)
        for name in ("decode_targets_qwen1.5b.json", "decode_targets_llama8b.json")
    ]
    engine = json.loads((bench_dir / "decode_targets_engine_step.json").read_text())
    runs = {key: value for part in parts for key, value in part["runs"].items()}
    written = report(parts, engine, evaluate(runs, engine))
    assert written == (bench_dir / "decode_targets.md").read_text()
    assert "(decode + the sampler's greedy pick, argmax and its log-probability" in written
