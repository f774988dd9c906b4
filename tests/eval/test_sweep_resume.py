"""A sweep run in slices with --resume gives the records of one uninterrupted sweep."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from eval.cli import main
from eval.conditions import Condition
from eval.datasets import DatasetSelection
from eval.guardian_replay import GuardianSetting
from eval.records import SampleRecord, read_records
from eval.report import ReportConfig, problems_ran, write_report
from eval.sweep import SweepConfig, meta_path, run_sweep

CONDITIONS = (Condition("full", 0), Condition("quest", 32), Condition("full", 0, GuardianSetting(25, 20)))
# Interleaved: gsm8k-0, math500-0, gsm8k-1, math500-1, gsm8k-2.
DATASETS = (DatasetSelection("gsm8k", 3), DatasetSelection("math500", 2))
ORDER = ["gsm8k-0", "math500-0", "gsm8k-1", "math500-1", "gsm8k-2"]


def sweep_config(model: Path, data_dir: Path, **changes: object) -> SweepConfig:
    config = SweepConfig(
        model=str(model),
        data_dir=data_dir,
        datasets=DATASETS,
        conditions=CONDITIONS,
        max_new_tokens=60,
        max_batch_size=4,
        kv_cache_tokens=4096,
        command="lil-eval sweep (test)",
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def without_timings(records: list[SampleRecord]) -> list[SampleRecord]:
    return [
        replace(r, ttft_seconds=0.0, decode_seconds=0.0, jct_seconds=0.0, queue_seconds=0.0) for r in records
    ]


@pytest.fixture(scope="module")
def whole(tiny_model_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted sweep."""
    out = tmp_path_factory.mktemp("whole") / "records.jsonl.gz"
    run_sweep(sweep_config(tiny_model_dir, data_dir), out)
    return out


def test_slices_cut_at_admission_then_resumed_equal_one_sweep(
    whole: Path, tiny_model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sliced.jsonl.gz"
    first = run_sweep(sweep_config(tiny_model_dir, data_dir, resume=True, max_problems=2), out)
    assert [(r.problem_id, r.policy) for r in read_records(out)] == [
        (problem, policy) for problem in ORDER[:2] for policy in ("full", "quest", "full")
    ]
    assert list(read_records(out)) == first
    second = run_sweep(sweep_config(tiny_model_dir, data_dir, resume=True, max_problems=2), out)
    assert [r.problem_id for r in second[6:]] == [p for p in ORDER[2:4] for _ in CONDITIONS]
    run_sweep(sweep_config(tiny_model_dir, data_dir, resume=True, max_batch_size=2), out)

    assert without_timings(list(read_records(out))) == without_timings(list(read_records(whole)))
    meta, whole_meta = (json.loads(meta_path(p).read_text()) for p in (out, whole))
    for field in ("records", "problems_run", "problems_selected", "problems_run_per_set", "generated_tokens"):
        assert meta[field] == whole_meta[field]
    assert meta["problems_run"] == 5 and meta["records"] == 15
    assert [(s["finished"], s["records_added"]) for s in meta["slices"]] == [(True, 6), (True, 6), (True, 3)]
    assert meta["config"]["max_batch_size"] == 2  # the last slice's settings

    # The report names the same problems as for the uninterrupted file, and the slices.
    ran = "gsm8k: the first 3 in file order (0-based positions 0-2); math500: the first 2 in file order"
    assert problems_ran(list(read_records(out))) == problems_ran(list(read_records(whole)))
    assert problems_ran(list(read_records(out))).startswith(ran)
    text = write_report([out], tmp_path / "report", ReportConfig(bootstrap=0)).read_text()
    assert f"problems per set: {ran} (0-based positions 0-1)." in text
    assert "5 of 5 selected problems admitted before the time limit" in text
    assert "  - run in 3 slices (`--resume`) from " in text and "; records added: 6, 6, 3\n" in text


def test_a_torn_last_record_is_dropped_and_its_problem_finished(
    whole: Path, tiny_model_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A kill during the third problem's flush: two problems, one record of the third, half of the next.
    out = tmp_path / "killed.jsonl"
    records = list(read_records(whole))
    out.write_text("".join(r.to_json() + "\n" for r in records[:7]) + records[7].to_json()[:100])
    shutil.copy(meta_path(whole), meta_path(out))
    resumed = run_sweep(sweep_config(tiny_model_dir, data_dir, resume=True), out)
    err = capsys.readouterr().err
    assert f"[lil-eval] resume: {out}: dropped a torn last record: line 8 (100 bytes) is cut short" in err
    assert f"[lil-eval] resume: {out} holds 7 of 15 records; this slice runs 8 (3 problems)" in err
    assert without_timings(resumed) == without_timings(list(read_records(out))) == without_timings(records)
    assert resumed[:7] == records[:7]  # kept as they were


def test_a_complete_file_resumes_to_nothing(
    whole: Path, tiny_model_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "records.jsonl.gz"
    shutil.copy(whole, out)
    shutil.copy(meta_path(whole), meta_path(out))
    before = (out.read_bytes(), meta_path(out).read_text())
    assert run_sweep(sweep_config(tiny_model_dir, data_dir, resume=True), out) == list(read_records(whole))
    err = capsys.readouterr().err
    assert f"[lil-eval] resume: {out} holds 15 of 15 records; this slice runs 0 (0 problems)" in err
    assert "[lil-eval] loaded" not in err  # the engine was not even loaded
    assert (out.read_bytes(), meta_path(out).read_text()) == before


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_new_tokens": 61}, "config.max_new_tokens"),
        (
            {"conditions": (*CONDITIONS[:2], Condition("full", 0, GuardianSetting(25, 10)))},
            "config.conditions",
        ),
        ({"datasets": (DatasetSelection("gsm8k", 4), DatasetSelection("math500", 2))}, "config.datasets"),
        ({"dtype": "float32"}, "config.dtype"),
        ({"base_interval": 5}, "config.base_interval"),
    ],
)
def test_a_sweep_with_other_settings_is_refused_naming_the_field(
    whole: Path, tiny_model_dir: Path, data_dir: Path, tmp_path: Path, changes: dict[str, object], field: str
) -> None:
    out = tmp_path / "records.jsonl.gz"
    shutil.copy(whole, out)
    shutil.copy(meta_path(whole), meta_path(out))
    with pytest.raises(ValueError, match=rf"^resume: {field} differs: "):
        run_sweep(sweep_config(tiny_model_dir, data_dir, resume=True, **changes), out)
    assert out.read_bytes() == whole.read_bytes()


def test_resume_refuses_a_file_without_meta_and_a_corrupt_middle(
    whole: Path, tiny_model_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "records.jsonl"
    lines = [r.to_json() for r in read_records(whole)]
    out.write_text("\n".join([lines[0], lines[1][:50], *lines[2:]]) + "\n")
    config = sweep_config(tiny_model_dir, data_dir, resume=True)
    with pytest.raises(ValueError, match="has no meta file"):
        run_sweep(config, out)
    shutil.copy(meta_path(whole), meta_path(out))
    with pytest.raises(ValueError, match=r"records\.jsonl:2: "):
        run_sweep(config, out)
    # The command line says it in one line and exits 2.
    argv = [
        "sweep",
        "--model",
        str(tiny_model_dir),
        "--data-dir",
        str(data_dir),
        "--datasets",
        "gsm8k:3,math500:2",
    ]
    assert main([*argv, "--policies", "full", "--max-new-tokens", "60", "--resume", "--out", str(out)]) == 2
    assert "lil-eval: resume: config.conditions differs: " in capsys.readouterr().err


def test_an_existing_file_is_kept_unless_resumed_or_overwritten(
    tiny_model_dir: Path, data_dir: Path, whole: Path, tmp_path: Path
) -> None:
    """A forgotten --resume must not wipe earlier slices: an existing records file is refused
    naming ``out``; --overwrite starts it afresh (the same records as the first sweep)."""
    out = tmp_path / whole.name
    shutil.copy(whole, out)
    shutil.copy(meta_path(whole), meta_path(out))
    before = out.read_bytes()
    with pytest.raises(ValueError, match=r"out: .* already holds records; pass --resume"):
        run_sweep(sweep_config(tiny_model_dir, data_dir), out)
    assert out.read_bytes() == before
    again = run_sweep(sweep_config(tiny_model_dir, data_dir, overwrite=True), out)
    assert without_timings(again) == without_timings(list(read_records(whole)))
