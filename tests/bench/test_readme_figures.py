"""The README's headline figures (``bench/targets.py``'s :func:`readme_figures`) are computed from
the report's runs: checked here on a small synthetic report whose right values are known."""

from __future__ import annotations

from bench.targets import readme_figures, run_name


def run(tbt_ms: float, floor_ms: float = 1.0) -> dict:
    return {"tbt_ms": tbt_ms, "floor_ms": floor_ms, "graph_replays": 20, "steps": 20, "eager_steps": 0}


def synthetic() -> tuple[list[dict], dict]:
    runs = {
        "qwen1.5b|4096|1|full|0": run(1.2, 0.8),
        "qwen1.5b|4096|1|h2o|1024": run(1.0),  # 1.2x faster: more than 5%
        "qwen1.5b|4096|1|quest|1024": run(1.24),  # 1.03x dense's time: within 5%
        "llama8b|32768|8|full|0": run(12.0, 10.0),
        "llama8b|32768|8|sink|4096": run(4.0),
        "llama8b|32768|8|h2o|4096": run(6.0),
        "llama8b|32768|8|quest|4096": run(8.0),
        "llama8b|32768|8|infllm|4096": run(13.2),  # 1.1x dense's time: more than 5% slower
        "mixed|llama8b|32768|8": {"tbt_ms": None},
        "mixed|llama8b|32768|6": run(16.0),
        "qwen1.5b|2048|1|full|0": run(1.25),
        "qwen1.5b|2048|32|full|0": run(2.5),
        "qwen1.5b|2048|64|full|0": run(3.2),
        "qwen1.5b|2048|128|full|0": run(4.0),
    }
    part = {"runs": runs, "hf_ms": {"qwen1.5b|2048|1": 100.0, "qwen1.5b|2048|32": 50.0}}
    engine = {
        "engine_step": [
            {"batch": 1, "overlap": True, "tbt_ms": 0.5},
            {"batch": 1, "overlap": False, "tbt_ms": 0.9},  # not the engine's default: left out
            {"batch": 8, "overlap": True, "tbt_ms": 0.75},
        ]
    }
    return [part], engine


def test_each_row_is_computed_from_the_runs():
    rows = dict(readme_figures(*synthetic()))
    assert rows["1.5B shape, dense, batch 1, 4k context (runner step)"] == (
        "1.20 ms per step, 1.50x its floor (0.80 ms)"
    )
    assert rows["8B shape, dense, batch 8, 32k context (runner step)"] == (
        "12.00 ms per step, 1.20x its floor (10.00 ms)"
    )
    assert rows["8B shape, batch 8, 32k: `sink` / `h2o` / `quest` / `infllm` at 4096 tokens"] == (
        "3.00x / 2.00x / 1.50x / 0.91x faster than dense"
    )
    # The largest mixed batch that fit.
    assert rows["8B shape, 32k: 6 requests of each of the five policies in one batch"] == "16.00 ms per step"
    assert rows["SmolLM2-135M, `LLMEngine.step()`, batch 1 / 8"] == "0.50 / 0.75 ms per token"
    assert rows["the grid's 6 sparse runs against dense in their cell"] == (
        "4 more than 5% faster, 1 more than 5% slower; the slowest 1.10x dense's time"
        " (llama8b, 32k, batch 8, infllm@4096)"
    )
    assert rows["against HF `generate`, 1.5B shape, 2048 tokens, batch 1 / 32"] == (
        "80.0x / 20.0x (HF's whole loop against our runner step: 100.0 / 50.0 ms per token)"
    )
    assert rows["throughput, 1.5B shape, 2048 tokens, batch 64 / 128"] == "20,000 / 32,000 tokens/s"


def test_rows_without_their_runs_are_left_out():
    parts, _ = synthetic()
    runs = parts[0]["runs"]
    del runs["llama8b|32768|8|quest|4096"], runs["qwen1.5b|4096|1|full|0"]
    rows = dict(readme_figures(parts, None))
    assert not any(case.startswith("8B shape, batch 8, 32k:") for case in rows)
    assert "1.5B shape, dense, batch 1, 4k context (runner step)" not in rows
    assert not any(case.startswith("SmolLM2") for case in rows)
    assert "8B shape, dense, batch 8, 32k context (runner step)" in rows


def test_run_names_hold_no_table_separator():
    assert run_name("qwen1.5b|32768|1|infllm|1024") == "qwen1.5b, 32k, batch 1, infllm@1024"
    assert run_name("llama8b|4096|8|full|0") == "llama8b, 4k, batch 8, full"
    assert "|" not in run_name("llama8b|5000|8|sink|64")
