"""Suite-wide settings: one intra-op thread and GPU-test skipping.

Tiny test models are dominated by per-op overhead, where one thread is many times faster than
several competing for CI's two cores. GPU tests carry ``@pytest.mark.gpu`` and skip without CUDA.
"""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by servers the tests start


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
