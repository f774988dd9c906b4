"""ServerConfig: flags over env vars over defaults; errors name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import add_serve_arguments
from server.config import ServerConfig
from server.settings import all_settings, build_server_config


def _flags(argv: list[str]) -> dict[str, object]:
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    return {s.name: getattr(args, s.name) for s in all_settings()}


def test_flag_beats_env_beats_default() -> None:
    env = {"LIL_SPARSE_MODEL": "from-env", "LIL_SPARSE_PORT": "6000", "LIL_SPARSE_MAX_WAITING": "3"}
    config = build_server_config(_flags(["--port", "7000"]), env)
    assert (config.model, config.port, config.max_waiting, config.metrics_port) == ("from-env", 7000, 3, 9400)


def test_default_options_from_flags_and_env() -> None:
    env = {"LIL_SPARSE_DEFAULT_GUARDIAN": "true", "LIL_SPARSE_DEFAULT_POLICY": "quest"}
    config = build_server_config(
        _flags(["--model", "m", "--default-budget-tokens", "128", "--no-reflection"]), env
    )
    assert config.default_options.guardian.enabled is True
    assert config.default_options.sparse.policy == "quest"
    assert config.default_options.sparse.budget_tokens == 128
    assert config.reflection is False


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ([], {}, "model: is required (--model or LIL_SPARSE_MODEL)"),
        (["--model", "m", "--max-running", "0"], {}, "max_running: must be >= 1, got 0"),
        (
            ["--model", "m", "--max-running", "8", "--max-num-batched-tokens", "4"],
            {},
            "max_num_batched_tokens: must be 0 (auto) or >= max_running (8)",
        ),
        (["--model", "m"], {"LIL_SPARSE_PORT": "http"}, "port: bad value in LIL_SPARSE_PORT"),
        (["--model", "m", "--default-top-p", "2"], {}, "default_top_p: must be in (0, 1], got 2.0"),
        (["--model", "m", "--default-policy", "dense"], {}, "default_policy: unknown policy 'dense'"),
        (
            ["--model", "m"],
            {"LIL_SPARSE_REFLECTION": "maybe"},
            "reflection: bad value in LIL_SPARSE_REFLECTION",
        ),
    ],
)
def test_errors_name_the_setting(flags: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        build_server_config(_flags(flags), env)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (
            ["--model", "m"],
            {"LIL_SPARSE_OVERLAP_SCHEDULING": "maybe"},
            "overlap_scheduling: must be one of auto, on, off, got 'maybe'"
            " (from LIL_SPARSE_OVERLAP_SCHEDULING)",
        ),
        (
            ["--model", "m"],
            {"LIL_SPARSE_SELECTION": "fast"},
            "selection: must be one of auto, exact, when_faster, got 'fast' (from LIL_SPARSE_SELECTION)",
        ),
        (
            ["--model", "m", "--max-running", "0"],
            {"LIL_SPARSE_MAX_RUNNING": "4"},
            "max_running: must be >= 1, got 0 (from --max-running)",
        ),
        (
            ["--model", "m"],
            {"LIL_SPARSE_DEFAULT_BUDGET_TOKENS": "-5"},
            "default_budget_tokens: must be >= 16 (one page of 16 tokens), got -5"
            " (from LIL_SPARSE_DEFAULT_BUDGET_TOKENS)",
        ),
        (  # below one page of the server's page size: refused at startup, not on every request
            ["--model", "m", "--page-size", "32", "--default-budget-tokens", "16"],
            {},
            "default_budget_tokens: must be >= 32 (one page of 32 tokens), got 16"
            " (from --default-budget-tokens)",
        ),
    ],
)
def test_an_invalid_value_names_the_flag_or_env_var_it_came_from(
    flags: list[str], env: dict[str, str], message: str
) -> None:
    """A value that parses but fails validation (an enumerated setting read from the
    environment, a bound) says where it came from, so the user knows which to fix."""
    with pytest.raises(ValueError) as raised:
        build_server_config(_flags(flags), env)
    assert str(raised.value) == message


def test_config_is_frozen_and_validates() -> None:
    config = ServerConfig(model="m")
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"^grace_period_seconds: must be >= 0"):
        ServerConfig(model="m", grace_period_seconds=-1)
    assert ServerConfig(model="m", max_running=2, max_waiting=3).max_in_flight == 5


def test_chunked_prefill_settings_reach_the_engine(tiny_model_dir) -> None:
    from server.app import load_engine

    env = {"LIL_SPARSE_MAX_NUM_BATCHED_TOKENS": "64"}
    config = build_server_config(_flags(["--model", str(tiny_model_dir), "--no-chunked-prefill"]), env)
    assert (config.chunked_prefill, config.max_num_batched_tokens) == (False, 64)
    defaults = ServerConfig(model="m")
    assert (defaults.chunked_prefill, defaults.max_num_batched_tokens) == (True, 0)
    engine = load_engine(config)
    try:
        assert (engine.config.chunked_prefill, engine.config.step_token_budget) == (False, 64)
        assert engine.scheduler.step_token_budget == 0  # unchunked: whole prompts in steps of their own
    finally:
        engine.close()
    chunked = load_engine(build_server_config(_flags(["--model", str(tiny_model_dir)]), env))
    try:
        assert chunked.scheduler.step_token_budget == 64
    finally:
        chunked.close()


def test_model_id_is_the_canonical_registry_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An alias or mixed case gives the registry name that info and lil_sparse_* metrics report."""
    monkeypatch.chdir(tmp_path)  # no folder called like an alias here
    assert ServerConfig(model="smollm2").model_id == "smollm2-135m-instruct"
    assert ServerConfig(model="SmolLM2-135M-Instruct").model_id == "smollm2-135m-instruct"
    assert ServerConfig(model="QWEN05").model_id == "qwen2.5-coder-0.5b-instruct"
    assert ServerConfig(model="smollm2", served_model_name="chat").model_id == "chat"
    assert ServerConfig(model="/models/other.gguf").model_id == "other"
    (tmp_path / "smollm2").mkdir()  # an existing folder wins over the alias, as in the loader
    assert ServerConfig(model="smollm2").model_id == "smollm2"
