"""Grading with math-verify and the record format."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest

from eval.grading import grade, grade_many
from eval.records import GuardianOnline, SampleRecord, Trajectory, read_records, write_records


@pytest.mark.parametrize(
    ("output", "gold", "correct"),
    [
        ("so she makes 9 * 2 = 18 dollars. \\boxed{18}", "18", True),
        ("The answer is \\boxed{\\dfrac{3}{4}}.", "\\frac{3}{4}", True),
        ("The answer is \\boxed{0.75}.", "\\frac{3}{4}", True),
        ("The answer is \\boxed{17}.", "18", False),
        ("I am not sure \\boxed{", "18", False),
        ("", "5", False),
    ],
)
def test_grade(output: str, gold: str, correct: bool) -> None:
    assert grade(output, gold).correct is correct


def test_grade_many_keeps_order() -> None:
    pairs = [("\\boxed{1}", "1"), ("\\boxed{2}", "3"), ("\\boxed{3}", "3")]
    assert [g.correct for g in grade_many(pairs)] == [True, False, True]
    assert grade_many(pairs)[0].extracted == "1"


def make_record(**overrides: object) -> SampleRecord:
    values: dict[str, object] = dict(
        dataset="gsm8k",
        problem_id="gsm8k-0",
        model="tiny",
        device="cpu",
        backend="reference",
        policy="quest",
        budget_tokens=64,
        max_new_tokens=128,
        prompt_tokens=40,
        output_tokens=50,
        output_text="x = 18, so \\boxed{18}",
        gold="18",
        finish_reason="eos",
        ttft_seconds=0.1,
        decode_seconds=0.5,
        jct_seconds=0.7,
        queue_seconds=0.05,
        mean_attended_pages=4.0,
        peak_kv_pages=12,
        guardian=GuardianOnline(True, 25, 20, 50, 50, (25, 50), (120, 125)),
        trajectory=Trajectory(25, (100, 120, 125), (0, 10, 21)),
        correct=True,
    )
    values.update(overrides)
    return SampleRecord(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["records.jsonl", "records.jsonl.gz"])
def test_records_round_trip(tmp_path: Path, name: str) -> None:
    records = [make_record(), make_record(policy="full", budget_tokens=0, correct=None, trajectory=None)]
    path = tmp_path / name
    assert write_records(path, records) == 2
    assert list(read_records(path)) == records
    if name.endswith(".gz"):
        with gzip.open(path, "rt") as lines:
            row = json.loads(lines.readline())
        expected = {
            "problem_id",
            "policy",
            "budget_tokens",
            "output_text",
            "output_tokens",
            "correct",
            "finish_reason",
            "ttft_seconds",
            "decode_seconds",
            "jct_seconds",
            "mean_attended_pages",
            "peak_kv_pages",
            "guardian",
            "trajectory",
        }
        assert expected <= set(row)
        assert row["guardian"]["checks_compressed_bytes"] == [120, 125]


def test_record_validation_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="finish_reason"):
        make_record(finish_reason="done")
    with pytest.raises(ValueError, match="budget_tokens"):
        make_record(policy="full", budget_tokens=64)
    with pytest.raises(ValueError, match="compressed_bytes"):
        Trajectory(25, (1, 2), (0,))
    assert make_record().service_seconds == pytest.approx(0.65)
    assert replace(make_record(), policy="h2o").condition == ("h2o", 64, 25, 20, "truncate")
    path = tmp_path / "bad.jsonl"
    path.write_text(make_record().to_json() + "\n" + '{"dataset": "gsm8k"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        list(read_records(path))


def test_the_dense_baseline_is_found_by_the_options_flags() -> None:
    from eval.dense import DENSE_ARM, DENSE_POLICY, is_dense
    from lil_sparse.options import POLICY_FIELDS

    assert DENSE_POLICY == "full" and DENSE_ARM == ("full", 0)
    assert [name for name in POLICY_FIELDS if is_dense(name)] == [DENSE_POLICY]
