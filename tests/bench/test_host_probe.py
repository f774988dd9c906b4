"""The host probe of the benchmarks (:func:`bench.common.host_launch_us`) and its lines in the
report: each results file's probe at its start, each engine's before its timed steps."""

from __future__ import annotations

import torch

from bench.common import host_launch_us
from bench.targets import report


def test_the_probe_times_launches_on_any_device():
    us = host_launch_us(torch.device("cpu"), launches=20, rounds=3)
    assert 0.0 < us < 1e5


def test_the_report_prints_the_probes_where_the_results_have_them():
    part = {
        "results_file": "e2e.json",
        "device": "dev",
        "date": "2026-12-01 13:14 UTC",
        "command": "python bench/decode_e2e.py",
        "bandwidth_gbs": 4200.0,
        "host_probe_us": 6.25,
        "runs": {},
    }
    engine = {
        "device": "dev",
        "date": "2026-12-01 13:14 UTC",
        "model": "m.gguf",
        "engine_step": [
            {
                "batch": 1,
                "overlap": True,
                "tbt_ms": 0.5,
                "p90_ms": 0.6,
                "steps": 64,
                "engines_tbt_ms": [0.5, 0.6],
                "engines_host_probe_us": [6.5, 12.25],
            }
        ],
    }
    text = report([part], engine, [])
    assert "- host probe at the run's start: 6.25 us per one-element kernel launch" in text
    assert "over 64 steps; host probe 6.50, 12.25 us per launch" in text
    without = report([{k: v for k, v in part.items() if k != "host_probe_us"}], None, [])
    assert "host probe" not in without
