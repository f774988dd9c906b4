"""Fixtures: tiny random-weight models and engines over them (CPU, fp32)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.testing.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), architecture="llama")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-qwen2"), architecture="qwen2", num_heads=4, num_kv_heads=1
    )


@pytest.fixture
def engine(tiny_model_dir: Path) -> Iterator[LLMEngine]:
    eng = LLMEngine.from_config(
        EngineConfig(
            model=str(tiny_model_dir),
            kv_cache_tokens=4096,
            max_batch_size=8,
            guardian_workers=0,
            poison_freed_pages=True,
        )
    )
    yield eng
    eng.close()
