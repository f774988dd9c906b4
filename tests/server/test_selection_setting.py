"""The server's ``selection`` setting reaches the engine, and gated rows reach /metrics."""

from __future__ import annotations

import argparse

import pytest
from prometheus_client import generate_latest

from lil_sparse.events import TokenEvent
from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions
from server.cli import add_serve_arguments
from server.config import ServerConfig
from server.metrics import ServerMetrics
from server.settings import all_settings, build_server_config


def _flags(argv: list[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    return {s.name: getattr(args, s.name) for s in all_settings()}


def test_auto_is_when_faster_on_cuda_and_exact_on_cpu() -> None:
    assert ServerConfig(model="m").selection == "auto"
    assert ServerConfig(model="m").engine_selection == "exact"
    assert ServerConfig(model="m", device="cuda:1").engine_selection == "when_faster"
    assert ServerConfig(model="m", device="cuda", selection="exact").engine_selection == "exact"
    assert ServerConfig(model="m", selection="when_faster").engine_selection == "when_faster"
    with pytest.raises(ValueError, match=r"^selection: must be one of auto, exact, when_faster, got 'fast'"):
        ServerConfig(model="m", selection="fast")
    env = {"LIL_SPARSE_SELECTION": "when_faster"}
    assert build_server_config(_flags(["--model", "m"]), env).selection == "when_faster"
    assert build_server_config(_flags(["--model", "m", "--selection", "exact"]), env).selection == "exact"


def test_when_faster_reaches_the_engine_and_gated_steps_reach_metrics(tiny_model_dir) -> None:
    """Under when_faster the default cost constants gate every step of the tiny model (see
    tests/engine/test_selection_gate_engine.py): a quest request over its budget for 9 decode
    steps counts 9 skipped rows."""
    from server.app import load_engine

    config = build_server_config(_flags(["--model", str(tiny_model_dir), "--selection", "when_faster"]), {})
    engine = load_engine(config)
    try:
        assert engine.config.selection == "when_faster" and engine.runner.gate.mode == "when_faster"
        options = RequestOptions(
            stopping=StoppingOptions(max_new_tokens=10, ignore_eos=True),
            sparse=SparseOptions(policy="quest", budget_tokens=64, dense_layers=1),
        )
        (report,) = engine.generate([list(range(3, 103))], [options])  # 7 pages, budget 4
    finally:
        engine.close()
    assert report.kv.selection_skipped_steps == 9
    metrics = ServerMetrics("tiny")
    event = TokenEvent(report.request_id, (), "", finish_reason=report.finish_reason, report=report)
    metrics.observe_finished(event, options)
    metrics.observe_finished(event, options)
    labels = {"model": "tiny", "policy": "quest"}
    assert metrics.registry.get_sample_value("lil_sparse_selection_skipped_rows_total", labels) == 18
    assert b"lil_sparse_selection_skipped_rows_total" in generate_latest(metrics.registry)


def test_exact_on_cpu_by_default(tiny_model_dir) -> None:
    from server.app import load_engine

    engine = load_engine(build_server_config(_flags(["--model", str(tiny_model_dir)]), {}))
    try:
        assert engine.config.selection == "exact"
    finally:
        engine.close()


def test_enumerated_flags_list_their_values_and_refuse_others_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser(prog="lil-sparse serve")
    add_serve_arguments(parser)
    usage = parser.format_usage()
    assert "--selection {auto,exact,when_faster}" in usage
    assert "--overlap-scheduling {auto,on,off}" in usage
    assert parser.parse_args(["--overlap-scheduling", "off", "--selection", "exact"]).selection == "exact"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--selection", "fast"])
    assert exit_info.value.code == 2
    assert "argument --selection: invalid choice: 'fast'" in capsys.readouterr().err
