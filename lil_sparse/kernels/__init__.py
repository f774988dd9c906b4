"""Triton kernels for the decode step's selection work (CUDA; the Triton interpreter on CPU).

Every kernel here has a plain PyTorch reference next to the policy that uses it, and a test that
compares the two over a grid (``tests/kernels``). The engine falls back to the references when
Triton or CUDA is missing, so nothing here is needed to run on CPU.
"""

from __future__ import annotations

import importlib.util

import torch

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def fused_selection_enabled(tensor: torch.Tensor, head_dim: int) -> bool:
    """Whether the Triton selection kernels serve ``tensor`` (on CUDA, head_dim a power of two)."""
    return TRITON_AVAILABLE and tensor.is_cuda and head_dim >= 16 and head_dim & (head_dim - 1) == 0
