"""Kernel tests run on CUDA, or on CPU through Triton's interpreter.

The interpreter must be chosen before Triton is first imported (``triton.jit`` reads it when a
kernel is defined), so it is set here, at collection, when no GPU is present.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
