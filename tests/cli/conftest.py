"""Fixtures for the CLI tests: a tiny model folder, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from lil_sparse.testing.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def cli_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 3 layers: quest (the README lines use it) keeps 2 dense layers by default and needs one more.
    return build_tiny_model(
        tmp_path_factory.mktemp("cli-tiny") / "tiny", architecture="llama", seed=0, num_layers=3
    )
