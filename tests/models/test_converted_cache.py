"""A known model's GGUF is converted once; later loads read the converted folder, not the GGUF."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import build_hf_checkpoint, write_gguf

from lil_sparse.loading import converted_cache, fetcher, load_model
from lil_sparse.loading.gguf_metadata import GGUFMetadata


@pytest.fixture
def known_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tokenizer_dir: Path) -> fetcher.KnownModel:
    """A tiny GGUF in a private cache, registered as a known model."""
    monkeypatch.setenv(fetcher.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    _, hf_model = build_hf_checkpoint(tmp_path / "hf", tokenizer_dir, "llama")
    path = write_gguf(tmp_path / "cache" / "tiny.gguf", hf_model, tokenizer_dir, "q8_0")
    model = fetcher.KnownModel(
        name="tiny-known", aliases=("tiny",), filename="tiny.gguf",
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(), size_description="tiny",
        description="test model", parts=(),
    )  # fmt: skip
    monkeypatch.setattr(fetcher, "KNOWN_MODELS", (model,))
    monkeypatch.setattr(converted_cache, "KNOWN_MODELS", (model,))
    return model


def test_second_load_reads_the_converted_folder(
    known_gguf: fetcher.KnownModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_model("tiny", torch.float32)
    folder = converted_cache.converted_folder_path(known_gguf, torch.float32)
    assert folder.name == f"tiny-known-{known_gguf.sha256[:12]}-float32"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging leftovers

    def no_gguf(*args: object) -> None:
        raise AssertionError("the GGUF was read again")

    monkeypatch.setattr(GGUFMetadata, "open", no_gguf)
    second = load_model("tiny", torch.float32)
    assert (second.config, second.name) == (first.config, "tiny-known")
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], tensor), name
    messages = [{"role": "user", "content": "What is 17 * 23?"}]
    assert second.tokenizer.apply_chat_template(messages) == first.tokenizer.apply_chat_template(messages)
    assert second.tokenizer.eos_token_ids == first.tokenizer.eos_token_ids


def test_each_dtype_has_its_own_conversion(known_gguf: fetcher.KnownModel) -> None:
    load_model("tiny", torch.float32)
    load_model("tiny", torch.bfloat16)
    converted = sorted(
        p.name for p in converted_cache.converted_folder_path(known_gguf, torch.float32).parent.iterdir()
    )
    assert [name.rsplit("-", 1)[1] for name in converted] == ["bfloat16", "float32"]


def test_turned_off_by_the_environment(
    known_gguf: fetcher.KnownModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(converted_cache.CONVERTED_CACHE_ENV, "0")
    load_model("tiny", torch.float32)
    assert not converted_cache.converted_folder_path(known_gguf, torch.float32).parent.exists()


def test_a_gguf_outside_the_cache_is_loaded_directly(
    tmp_path: Path, tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fetcher.CACHE_ENV, str(tmp_path / "cache"))
    _, hf_model = build_hf_checkpoint(tmp_path / "hf", tokenizer_dir, "llama")
    path = write_gguf(tmp_path / "mine.gguf", hf_model, tokenizer_dir, "f32")
    assert load_model(path, torch.float32).name == "mine"
    assert not (tmp_path / "cache").exists()
