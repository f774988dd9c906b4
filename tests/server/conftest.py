"""Shared fixtures: one tiny random-weight model and one loaded engine for the whole session.

Each test starts its own in-process server on free ports over the shared engine; the server's
drain aborts anything a test left running, so the engine is idle again for the next test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lil_sparse.testing.tiny_model import build_tiny_model

# Small enough that a few requests move the KV usage gauge visibly.
KV_CACHE_TOKENS = 4096


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "model", architecture="llama", seed=0)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> Iterator[Any]:
    from lil_sparse.config import EngineConfig
    from lil_sparse.engine import LLMEngine

    engine = LLMEngine.from_config(
        EngineConfig(
            model=str(tiny_model_dir), kv_cache_tokens=KV_CACHE_TOKENS, max_batch_size=8, guardian_workers=1
        )
    )
    yield engine
    engine.close()
