"""Programmatic dependent launch (PDL) for the decode step's chain of small Triton kernels.

At batch 1 a decode layer is a chain of seven dependent kernels (the QKV GEMV with the input
norm, RoPE and the K/V append inside, attention and its merge, output GEMV, norm, gate/up GEMV,
down GEMV; nine when PDL came in, 2026-11-30), each reading a few microseconds' worth of
bytes; between two of them the GPU drains one grid and starts the next. With PDL (Hopper
and later: the launch attribute ``CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION``,
Triton's ``launch_pdl``) a kernel
may start once every program of the one before it has signalled
(:func:`~triton.language.extra.cuda.gdc_launch_dependents`); it then waits in
:func:`~triton.language.extra.cuda.gdc_wait` until that kernel has finished and its writes are
visible. Captured into a CUDA graph, the launches become programmatic edges.

Measured on the H200 (2026-11-30, 22:23 UTC, `bench/decode_e2e.py` at the 1.5B shape and 4k
tokens, PDL on and off alternately, two rounds in one device call, printed output): batch 1
dense 1.43 / 1.43 ms without PDL against 1.30 / 1.30 ms with it; batch 8 (cuBLAS GEMMs between
the Triton kernels) 2.16 / 2.15 against 2.13 / 2.12 ms.

The rule every kernel here follows: call :func:`wait_for_previous` before any load of data
another kernel writes and before any store. Before it a kernel may only compute indices and load
model weights, which no kernel of a step writes, through helpers named ``_prefetch_*`` (the GEMV
loads its first weight tiles there: :mod:`lil_sparse.kernels.gemv`); every other kernel calls it
first. ``tests/kernels/test_pdl.py`` checks this in the kernels' source. Since each kernel
signals before it waits, the kernel after it may start while kernels further back still run, so
even a load of data written two kernels back must come after the wait. PyTorch's kernels launch
without PDL and keep stream order. FlashInfer's decode does launch with it (0.6.6's ``run``
turns it on for capability 9.0 and later unless told otherwise) and reads its plan (request and
tile indices, ``indptr``, ``last_page_len``, the chunk size) before its own
``griddepcontrol.wait``, so it may read them while a kernel here still runs: safe only because
nothing in a step writes them (``plan()`` copies them before the step; the selection writes
only ``indices``, which FlashInfer reads after its wait). Triton's CPU interpreter has neither
instruction, so the kernels take ``PDL`` as a constexpr that is False off CUDA.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

ENABLED = True
"""Whether the kernels that support it launch with PDL on GPUs of compute capability 9.0 and
later (benchmarks switch it off to measure it)."""


def use_pdl(tensor: torch.Tensor) -> bool:
    """Whether a kernel over ``tensor`` launches with PDL: on CUDA, capability >= 9.0
    (:func:`device_supports_pdl`), and :data:`ENABLED`."""
    return ENABLED and tensor.is_cuda and device_supports_pdl(tensor.device)


@functools.cache
def device_supports_pdl(device: torch.device) -> bool:
    """Whether the CUDA ``device`` (with its index) has compute capability 9.0 or later. Asked
    once per device: ``torch.cuda.get_device_capability`` runs several Python calls each time, and
    every launch of an eager step (prefill, graphs off, a shape's first steps) asks twice."""
    return torch.cuda.get_device_capability(device)[0] >= 9


def launch_options(tensor: torch.Tensor) -> dict[str, bool]:
    """Keyword arguments of a Triton launch over ``tensor``: ``launch_pdl`` where
    :func:`use_pdl`, else none (the interpreter takes no such option)."""
    return {"launch_pdl": True} if use_pdl(tensor) else {}


@triton.jit
def wait_for_previous(PDL: tl.constexpr):
    """Let the next kernel start launching, then wait until the previous kernel has finished
    (both no-ops when ``PDL`` is False). Call it in a kernel launched with PDL before it reads
    anything another kernel writes or stores anything; only index arithmetic and ``_prefetch_*``
    loads of weights may come first (see the module docstring)."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
