"""Suite-wide settings: one intra-op thread, Triton's interpreter without a GPU, GPU-test skipping.

Tiny test models are dominated by per-op overhead, where one thread is many times faster than
several competing for CI's two cores. GPU tests carry ``@pytest.mark.gpu`` and skip without CUDA.
Without a GPU the Triton kernels run through Triton's interpreter; it must be chosen before Triton
is first imported anywhere (``triton.jit`` reads it when a kernel is defined, and any test module,
a GPU one included, may import a kernel module at collection), so it is set here, first.
"""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by servers the tests start
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
