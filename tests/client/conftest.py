"""A real in-process server over a tiny random-weight model, shared by the client tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lil_sparse.testing.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def client_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from lil_sparse.config import EngineConfig
    from lil_sparse.engine import LLMEngine
    from server.background import BackgroundServer
    from server.config import ServerConfig

    # Three layers: Quest's default two dense layers leave one sparse layer (it refuses to be all dense).
    model_dir: Path = build_tiny_model(
        tmp_path_factory.mktemp("tiny-qwen2") / "model", architecture="qwen2", num_layers=3
    )
    engine = LLMEngine.from_config(EngineConfig(model=str(model_dir), kv_cache_tokens=4096, max_batch_size=4))
    config = ServerConfig(model=str(model_dir), host="127.0.0.1", port=0, metrics_port=0)
    with BackgroundServer(config, engine=engine) as background:
        yield background
    engine.close()
