"""The README's block of speed-target lines is what ``bench/targets.py --readme`` writes from the
committed report's JSON: the README cannot quote targets the report does not hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.targets import README_BEGIN, README_END, evaluate, readme_block, replace_readme_block

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "docs" / "bench"


def committed_block() -> str:
    parts = [
        dict(json.loads((BENCH / name).read_text()), results_file=name)
        for name in ("decode_targets_qwen1.5b.json", "decode_targets_llama8b.json")
    ]
    engine = json.loads((BENCH / "decode_targets_engine_step.json").read_text())
    runs = {key: value for part in parts for key, value in part["runs"].items()}
    return readme_block(parts, engine, evaluate(runs, engine))


def test_the_readme_holds_the_committed_reports_target_lines():
    block = committed_block()
    readme = (ROOT / "README.md").read_text()
    assert block in readme
    lines = [line.strip() for line in block.splitlines() if line.strip().startswith("TARGET ")]
    assert [line.split()[2] for line in lines] == [f"speed-T{n}" for n in range(1, 8)]
    report = (BENCH / "decode_targets.md").read_text()
    assert all(line in report for line in lines)  # the report's own lines, word for word


def test_the_block_is_replaced_in_place_and_a_readme_without_one_is_refused():
    text = f"intro\n{README_BEGIN}\nold lines\n{README_END}\noutro\n"
    assert replace_readme_block(text, f"{README_BEGIN}\nnew\n{README_END}") == (
        f"intro\n{README_BEGIN}\nnew\n{README_END}\noutro\n"
    )
    with pytest.raises(ValueError, match="one block"):
        replace_readme_block("no block here", "x")
    with pytest.raises(ValueError, match="one block"):
        replace_readme_block(text + text, "x")
