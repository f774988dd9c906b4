"""A whole sweep on the tiny model (in-process and through a real gRPC server), then the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval.analysis import online_agreement
from eval.cli import main
from eval.conditions import Condition, build_conditions
from eval.datasets import DatasetSelection
from eval.guardian_replay import GuardianSetting
from eval.records import SampleRecord, read_records
from eval.report import ReportConfig, write_report
from eval.sweep import SweepConfig, meta_path, run_sweep

MAX_NEW_TOKENS = 60
# The answer-forcing arm's threshold makes its second check (after 50 tokens) always say stop.
ANSWER_SETTING = GuardianSetting(25, 10**5)
CONDITIONS = tuple(
    build_conditions(("full", "quest", "sink"), (32,), (GuardianSetting(25, 20),), (ANSWER_SETTING,), 8)
)


@pytest.fixture(scope="module")
def sweep(
    tiny_model_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[SampleRecord]]:
    out = tmp_path_factory.mktemp("sweep") / "records.jsonl.gz"
    config = SweepConfig(
        model=str(tiny_model_dir),
        data_dir=data_dir,
        datasets=(DatasetSelection("gsm8k", 2), DatasetSelection("math500", 1)),
        conditions=CONDITIONS,
        max_new_tokens=MAX_NEW_TOKENS,
        max_batch_size=8,
        kv_cache_tokens=8192,
        command="lil-eval sweep (test)",
    )
    return out, run_sweep(config, out)


def test_sweep_writes_one_record_per_problem_and_condition(sweep: tuple[Path, list[SampleRecord]]) -> None:
    path, records = sweep
    assert list(read_records(path)) == records
    keys = [(r.dataset, r.problem_id, r.condition) for r in records]
    assert len(keys) == len(set(keys)) == 3 * len(CONDITIONS)
    assert {r.problem_id for r in records} == {"gsm8k-0", "gsm8k-1", "math500-0"}
    for r in records:
        assert 1 <= r.output_tokens <= MAX_NEW_TOKENS
        assert isinstance(r.correct, bool)  # graded with math-verify
        assert r.trajectory is not None
        assert len(r.trajectory.compressed_bytes) == r.output_tokens // 25 + 1
        assert r.jct_seconds >= r.ttft_seconds >= 0 and r.peak_kv_pages > 0
    assert {r.gold for r in records if r.problem_id == "math500-0"} == {"\\frac{3}{4}"}
    assert {(r.problem_id, r.problem_position) for r in records} == {
        ("gsm8k-0", 0),
        ("gsm8k-1", 1),
        ("math500-0", 0),
    }
    answering = [r for r in records if r.guardian.action == "answer"]
    assert len(answering) == 3 and all(r.guardian.answer_max_tokens == 8 for r in answering)
    for r in answering:
        g = r.guardian
        # Thinking up to the stop, then the forced prompt, then the answer (8 tokens or up to the cap).
        assert r.finish_reason == "early_stop" and g.stop_step == g.answer_started_at == 50
        assert r.output_tokens == 50 + g.answer_prompt_tokens + g.answer_tokens
        assert g.answer_tokens == 8 or r.output_tokens == MAX_NEW_TOKENS
    meta = json.loads(meta_path(path).read_text())
    assert meta["command"] == "lil-eval sweep (test)"
    assert meta["admission_cut"] is True and meta["problems_run"] == 3
    assert meta["selection"] == "exact"  # the study honours every budget
    assert meta["problems_run_per_set"] == {
        "gsm8k": {"count": 2, "positions": [0, 1], "ids": ["gsm8k-0", "gsm8k-1"]},
        "math500": {"count": 1, "positions": [0], "ids": ["math500-0"]},
    }


def test_online_guardian_in_sweep_agrees_with_replay(sweep: tuple[Path, list[SampleRecord]]) -> None:
    _, records = sweep
    [agreement] = online_agreement(records)
    assert agreement.setting == GuardianSetting(25, 20)
    assert agreement.runs == 3
    assert agreement.sizes_equal == agreement.runs
    assert agreement.stops_equal == agreement.runs


def test_report_writes_tables_and_pngs(sweep: tuple[Path, list[SampleRecord]], tmp_path: Path) -> None:
    path, _ = sweep
    config = ReportConfig(GuardianSetting(25, 20), (25, 50), (10, 20), bootstrap=50)
    report = write_report([path], tmp_path, config)
    text = report.read_text()
    for heading in (
        "## gsm8k: policies",
        "## math500: policies",
        "Guardian on dense attention",
        "### all sets pooled",
        "Guardian online (in the engine) against offline replay",
        "lil-eval sweep (test)",
        "gsm8k: the first 2 in file order (0-based positions 0-1); "
        "math500: the first 1 in file order (0-based positions 0)",
        "3 of 3 selected problems admitted before the time limit, each run to the end under every condition",
        "## Guardian stop action `answer` (online) against truncation (replayed on the dense run)",
        "| f=25, t=100000 | 8 | 3 | 100 |",
    ):
        assert heading in text
    # One Table 1 row per arm for each dataset, full first.
    gsm8k = text.split("## gsm8k: policies")[1].split("##")[0]
    rows = [line for line in gsm8k.splitlines() if line.startswith("| ") and not line.startswith("| policy")]
    assert [row.split(" | ")[0] for row in rows] == ["| full", "| sink", "| quest"]
    # Table 2 says how many checks could stop an output: at MAX_NEW_TOKENS (60) only f=25's
    # check at 50 tokens can (when an output reaches 51 tokens); f=50's second check (100) never
    # comes, so its 0% stopped is for want of a check, and the column says so with 0.0.
    pooled = text.split("### all sets pooled")[1].split("##")[0]
    table2 = {
        tuple(row.split(" | ")[:2]): row.split(" | ")[3]
        for row in pooled.splitlines()
        if row.startswith("| 25 |") or row.startswith("| 50 |")
    }
    assert table2[("| 50", "10")] == table2[("| 50", "20")] == "0.0"
    assert 0.0 < float(table2[("| 25", "20")]) <= 1.0
    for name in ("length_vs_budget", "accuracy_vs_budget", "guardian_tradeoff", "compressed_vs_tokens"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name}.png)" in text


def test_cli_report_and_bad_arguments(
    sweep: tuple[Path, list[SampleRecord]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = sweep
    assert (
        main(
            [
                "report",
                str(path),
                "--out",
                str(tmp_path),
                "--bootstrap",
                "20",
                "--guardian",
                "25:20",
                "--guardian-grid",
                "25:20",
                "--grade-workers",
                "0",
            ]
        )
        == 0
    )
    assert (tmp_path / "lil.md").is_file()
    assert main(["sweep", "--model", "m", "--data-dir", str(tmp_path / "nowhere"), "--out", "x.jsonl"]) == 2
    assert "data_dir" in capsys.readouterr().err
    with pytest.raises(ValueError, match="budget_tokens"):
        Condition("quest", 0)


def test_server_mode_sends_the_same_sweep_over_grpc(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    from lil_sparse.config import EngineConfig
    from lil_sparse.engine import LLMEngine
    from server.background import BackgroundServer
    from server.config import ServerConfig

    engine = LLMEngine.from_config(
        EngineConfig(model=str(tiny_model_dir), kv_cache_tokens=8192, max_batch_size=8, guardian_workers=0)
    )
    conditions = (
        Condition("quest", 32),
        Condition("full", 0, GuardianSetting(25, 20)),
        Condition("full", 0, ANSWER_SETTING, "answer", 8),
    )
    try:
        with BackgroundServer(
            ServerConfig(model=str(tiny_model_dir), host="127.0.0.1", port=0, metrics_port=0), engine
        ) as server:
            config = SweepConfig(
                model=str(tiny_model_dir),
                data_dir=data_dir,
                datasets=(DatasetSelection("gsm8k", 1),),
                conditions=conditions,
                max_new_tokens=MAX_NEW_TOKENS,
                server=server.address,
                concurrency=2,
            )
            records = run_sweep(config, tmp_path / "server.jsonl")
    finally:
        engine.close()
    assert [(r.policy, r.budget_tokens, r.guardian.enabled, r.guardian.action) for r in records] == [
        ("quest", 32, False, "truncate"),
        ("full", 0, True, "truncate"),
        ("full", 0, True, "answer"),
    ]
    g = records[2].guardian
    assert records[2].finish_reason == "early_stop" and g.stop_step == 50 and g.answer_max_tokens == 8
    assert g.answer_started_at == g.applied_at_step and g.answer_started_at is not None
    assert records[2].output_tokens == g.answer_started_at + g.answer_prompt_tokens + g.answer_tokens
    assert {r.backend for r in records} == {"server"}
    for r in records:
        assert 1 <= r.output_tokens <= MAX_NEW_TOKENS
        assert r.prompt_tokens > 0 and isinstance(r.correct, bool)
    [agreement] = online_agreement(records)
    assert agreement.sizes_equal == agreement.stops_equal == 1


def test_report_refuses_to_pair_across_models(sweep: tuple[Path, list[SampleRecord]], tmp_path: Path) -> None:
    from dataclasses import replace

    from eval.records import write_records

    _, records = sweep
    mixed = tmp_path / "mixed.jsonl"
    write_records(mixed, [*records, replace(records[0], model="other")])
    with pytest.raises(ValueError, match="one model per report"):
        write_report([mixed], tmp_path / "out", ReportConfig(bootstrap=0))


def test_report_refuses_to_mix_caps_and_names_a_missing_file(
    sweep: tuple[Path, list[SampleRecord]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A newcomer reported a 64-token and a 16-token sweep together: the header listed both caps
    # and the tables paired whichever record came last. A missing file was a traceback.
    from dataclasses import replace

    from eval.records import write_records

    _, records = sweep
    mixed = tmp_path / "mixed.jsonl"
    write_records(mixed, [*records, replace(records[0], max_new_tokens=records[0].max_new_tokens + 1)])
    with pytest.raises(ValueError, match="one max_new_tokens per report"):
        write_report([mixed], tmp_path / "out", ReportConfig(bootstrap=0))
    assert main(["report", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"lil-eval: records: no such file: {tmp_path / 'nope.jsonl'}\n"
    with pytest.raises(SystemExit):  # --out is required: no default folder inside the checkout
        main(["report", str(tmp_path / "nope.jsonl")])


def test_sweep_mistakes_fail_before_the_model_loads_and_leave_nothing(
    tiny_model_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.jsonl"
    base = ["sweep", "--model", str(tiny_model_dir), "--data-dir", str(data_dir), "--out", str(out)]
    cases = [
        (["--datasets", "gsm8k:1", "--policies", "quest", "--budgets", "8"], "budget_tokens: must be >= 16"),
        (["--datasets", "gsm8k:0"], "the count must be >= 1"),
        (["--datasets", "gsm8k,gsm8k:1"], "datasets: gsm8k named twice"),
        (["--datasets", "gsm8k:1", "--out", str(tmp_path / "r.csv")], "must end in .jsonl or .jsonl.gz"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--datasets", "gsm8k:1", "--device", "cuda"], "device: cuda is not available here"))
    for flags, message in cases:
        assert main([*base, *flags]) == 2, flags
        error = capsys.readouterr().err
        assert error.startswith("lil-eval: ") and message in error and len(error.splitlines()) == 1, error
        assert not out.exists() and not list(tmp_path.iterdir()), flags  # no records, no meta


def test_the_verdict_warns_when_most_lengths_are_the_cap(
    sweep: tuple[Path, list[SampleRecord]], tmp_path: Path
) -> None:
    # A newcomer's 64-token sweep stopped every output at the cap, and the verdict still read
    # "No: no policy and budget gives significantly longer answers".
    from dataclasses import replace

    from eval.records import write_records

    _, records = sweep
    for finish, warned in (("length", True), ("eos", False)):
        path = tmp_path / f"{finish}.jsonl"
        write_records(path, [replace(r, finish_reason=finish) for r in records])
        page = write_report([path], tmp_path / finish, ReportConfig(bootstrap=0)).read_text()
        assert ("**Read with care:** 100% of all outputs stopped at `max_new_tokens`" in page) == warned
