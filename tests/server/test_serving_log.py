"""The "serving" log line names the model by the id info, metrics and gateways use."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from server_harness import start_server


def _serving_line(caplog: pytest.LogCaptureFixture) -> str:
    lines = [r.getMessage() for r in caplog.records if r.name == "server.app" and "serving" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


def test_serving_line_names_the_served_id_and_what_model_said(
    tiny_model_dir: Path, tiny_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.app")
    server = start_server(tiny_model_dir, tiny_engine, served_model_name="tiny-quest")
    try:
        line = _serving_line(caplog)
        assert line == (
            f"serving tiny-quest (--model {tiny_model_dir}) on port {server.port}, "
            f"metrics on port {server.metrics_port}"
        )
    finally:
        server.stop()


def test_serving_line_gives_an_alias_its_full_name(
    tiny_model_dir: Path, tiny_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``--model SmolLM2`` (any alias, any case) is served, and logged, as smollm2-135m-instruct.
    The engine passed in is the tiny one: only the name is under test, no model loads."""
    caplog.set_level(logging.INFO, logger="server.app")
    server = start_server("SmolLM2", tiny_engine)
    try:
        line = _serving_line(caplog)
        assert line == (
            f"serving smollm2-135m-instruct (--model SmolLM2) on port {server.port}, "
            f"metrics on port {server.metrics_port}"
        )
    finally:
        server.stop()
