"""The `convert` and `models` subcommands, driven through argparse as cli/main.py does."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import build_hf_checkpoint, write_gguf

from lil_sparse.cli import convert as convert_cli
from lil_sparse.cli import models as models_cli
from lil_sparse.loading import fetcher, load_model


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lil-sparse")
    subparsers = parser.add_subparsers(dest="command", required=True)
    convert_cli.add_parser(subparsers)
    models_cli.add_parser(subparsers)
    return parser.parse_args(argv)


def test_models_list_and_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(fetcher.CACHE_ENV, str(tmp_path))
    (tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"x")
    args = parse(["models", "list"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("smollm2-135m-instruct (default)  [smollm2]") and lines[0].endswith("cached")
    assert any(
        line.startswith("qwen2.5-coder-1.5b-instruct  [qwen15]") and "not fetched" in line for line in lines
    )
    args = parse(["models", "path", "qwen05"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    assert parse(["models", "fetch"]).name == "smollm2-135m-instruct"


def test_convert_command(tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, hf_model = build_hf_checkpoint(tmp_path / "hf", tokenizer_dir, "qwen2")
    gguf_path = write_gguf(tmp_path / "tiny.gguf", hf_model, tokenizer_dir, "f16")
    args = parse(["convert", str(gguf_path), str(tmp_path / "out")])
    assert args.func(args) == 0
    assert "wrote" in capsys.readouterr().out
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    loaded = load_model(tmp_path / "out", torch.float32, "cpu")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.config.architecture == "qwen2" and loaded.name == "out"
    assert loaded.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("assistant\n")


def test_convert_rejects_a_folder(tokenizer_dir: Path, tmp_path: Path) -> None:
    args = parse(["convert", str(tokenizer_dir), str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"convert takes a \.gguf"):
        args.func(args)


def test_unknown_source_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="neither a model folder"):
        load_model("no-such-model-or-path", torch.float32, "cpu")
