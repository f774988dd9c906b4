"""Fixtures: a tiny random-weight model, a data folder with a few problems written here, and one
small sweep shared by the tests that read its records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lil_sparse.testing.tiny_model import build_tiny_model

PROBLEMS: dict[str, list[dict[str, object]]] = {
    "gsm8k": [
        {"id": "gsm8k-0", "problem": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "7"},
        {"id": "gsm8k-1", "problem": "A box holds 12 eggs. How many eggs are in 2 boxes?", "answer": "24"},
        {"id": "gsm8k-2", "problem": "What is 10 minus 4?", "answer": "6"},
    ],
    "math500": [
        {"id": "math500-0", "problem": "Simplify $\\frac{6}{8}$.", "answer": "\\frac{3}{4}", "level": 1},
        {"id": "math500-1", "problem": "Solve $2x = 10$.", "answer": "5"},
    ],
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Three layers: Quest's default two dense layers leave one sparse layer (it refuses to be all dense).
    return build_tiny_model(
        tmp_path_factory.mktemp("eval-tiny") / "model", architecture="llama", seed=0, num_layers=3
    )


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eval-data")
    for name, rows in PROBLEMS.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder
