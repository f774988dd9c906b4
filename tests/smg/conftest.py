"""Fixtures for the SMG tests: a tiny model folder and a factory of in-process workers.

Each worker gets its own engine (an engine belongs to one engine loop thread); the tiny model
loads in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lil_sparse.testing.tiny_model import build_tiny_model

KV_CACHE_TOKENS = 4096


@pytest.fixture(scope="session")
def smg_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("smg-tiny") / "tiny", architecture="llama", seed=0)


@pytest.fixture(scope="module")
def start_worker(smg_model_dir: Path) -> Iterator[Callable[..., Any]]:
    """``start_worker(**server_config_overrides)`` -> a started BackgroundServer; all stop at the end."""
    from lil_sparse.config import EngineConfig
    from lil_sparse.engine import LLMEngine
    from server.background import BackgroundServer
    from server.config import ServerConfig

    started: list[tuple[Any, Any]] = []

    def start(**overrides: Any) -> Any:
        engine = LLMEngine.from_config(
            EngineConfig(
                model=str(smg_model_dir),
                kv_cache_tokens=KV_CACHE_TOKENS,
                max_batch_size=4,
                guardian_workers=0,
            )
        )
        settings: dict[str, Any] = {
            "model": str(smg_model_dir), "host": "127.0.0.1", "port": 0, "metrics_port": 0,
            "kv_cache_tokens": KV_CACHE_TOKENS, "max_running": 4,
        }  # fmt: skip
        settings.update(overrides)
        server = BackgroundServer(ServerConfig(**settings), engine=engine).start()
        started.append((server, engine))
        return server

    yield start
    for server, engine in started:
        server.stop()
        engine.close()
