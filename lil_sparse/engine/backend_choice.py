"""Pick the attention backend: FlashInfer on CUDA when installed, the reference otherwise."""

from __future__ import annotations

import importlib.util

from lil_sparse.attention.backend import AttentionBackend
from lil_sparse.attention.reference import ReferenceBackend
from lil_sparse.config import EngineConfig
from lil_sparse.models.config import ModelConfig


def flashinfer_available() -> bool:
    return importlib.util.find_spec("flashinfer") is not None


def choose_backend(config: EngineConfig, model_config: ModelConfig) -> AttentionBackend:
    on_cuda = config.device.startswith("cuda")
    wanted = config.backend
    if wanted == "auto":
        wanted = "flashinfer" if on_cuda and flashinfer_available() else "reference"
    if wanted == "reference":
        return ReferenceBackend()
    if not flashinfer_available():
        raise ValueError("backend: 'flashinfer' was asked for but the flashinfer package is not installed")
    from lil_sparse.attention.flashinfer_backend import FlashInferBackend

    return FlashInferBackend(config, model_config)
