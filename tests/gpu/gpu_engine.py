"""The engine the GPU tests run: bf16 FlashInfer on CUDA, a small KV pool, no Guardian threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine

DEFAULTS: dict[str, Any] = {
    "device": "cuda",
    "dtype": "bfloat16",
    "backend": "flashinfer",
    "kv_cache_tokens": 4096,
    "max_batch_size": 4,
    "guardian_workers": 0,
    # Each test builds its own engines; test_warm_up_gpu.py runs the start-up warm-up.
    "warm_up": False,
}


def gpu_engine(model_dir: Path | str, **overrides: Any) -> LLMEngine:
    """``LLMEngine`` over ``model_dir`` with :data:`DEFAULTS`, any field overridden by keyword."""
    return LLMEngine.from_config(EngineConfig(model=str(model_dir), **{**DEFAULTS, **overrides}))
