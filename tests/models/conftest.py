"""Fixtures for the model and loading tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lil_sparse.testing.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model folder; tests use its byte-level BPE tokenizer files (vocab 384, EOS <|im_end|>)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_tokenizer"), architecture="llama", seed=0)
