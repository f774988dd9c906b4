"""GPU fixtures: tiny bf16-ready models whose head_dim FlashInfer runs.

GPU tests carry ``gpu`` (skipped without CUDA) and skip without FlashInfer.

Tolerances used across these tests (bf16 inputs, fp32 accumulation in both backends):
attention outputs agree to ``max |a - b| <= 3e-2`` and ``||a - b|| / ||b|| <= 1e-2``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lil_sparse.testing.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_gqa2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama, 4 query / 2 KV heads, head_dim 64 (non-tensor-core decode)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("gpu-llama"),
        architecture="llama",
        hidden_size=256,
        num_heads=4,
        num_kv_heads=2,
    )


@pytest.fixture(scope="session")
def tiny_gqa8_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2, 8 query / 1 KV head, head_dim 64 (tensor-core decode)."""
    return build_tiny_model(
        tmp_path_factory.mktemp("gpu-qwen2"),
        architecture="qwen2",
        hidden_size=512,
        num_heads=8,
        num_kv_heads=1,
    )
