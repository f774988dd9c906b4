"""Attention backends: a plain PyTorch reference and FlashInfer on CUDA."""

from lil_sparse.attention.backend import AttentionBackend
from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.attention.reference import ReferenceBackend

__all__ = ["AttentionBackend", "DecodeLayout", "ReferenceBackend"]
