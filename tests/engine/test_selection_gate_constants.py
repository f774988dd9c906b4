"""bench/gate_constants.py: the selection gate's fixed latency from a bench run, by hand."""

from __future__ import annotations

import pytest

from bench.gate_constants import gate_constants


def result(selection: str = "exact") -> dict:
    """A 1 GB/s run (a byte costs 1e-6 ms) of the qwen1.5b shape (28 layers; quest selects in 26)."""
    return {
        "command": "python bench/decode_e2e.py (test)",
        "selection": selection,
        "bandwidth_gbs": 1.0,
        "runs": {
            "qwen1.5b|4096|1|full|0": {"tbt_ms": 2.0, "kv_bytes": 3_000_000, "meta_bytes": 0},
            # 1.1 ms slower while moving 1.5e6 fewer bytes (2e6 less K/V, 0.5e6 of bounds):
            # (1.1 + 1.5) ms / 26 layers = 100 us.
            "qwen1.5b|4096|1|quest|1024": {"tbt_ms": 3.1, "kv_bytes": 1_000_000, "meta_bytes": 500_000},
            # (0.9 + 1.9) ms / 28 layers = 100 us.
            "qwen1.5b|4096|1|infllm|1024": {"tbt_ms": 2.9, "kv_bytes": 1_000_000, "meta_bytes": 100_000},
            "qwen1.5b|4096|1|sink|1024": {"tbt_ms": 1.9, "kv_bytes": 1_000_000, "meta_bytes": 0},
            "llama8b|32768|32|fit": {"fits": False},
            "mixed|llama8b|32768|8": {"fits": False},
        },
    }


def test_latency_per_selecting_layer_and_bandwidth():
    constants = gate_constants([result()])
    assert constants == {
        "quest": pytest.approx(100.0),
        "infllm": pytest.approx(100.0),
        "bandwidth_bytes_per_s": 1e9,
    }


def test_a_when_faster_run_is_refused():
    with pytest.raises(ValueError, match=r"^selection: run .* with --selection exact"):
        gate_constants([result("when_faster")])
