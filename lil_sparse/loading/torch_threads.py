"""How many threads torch's CPU kernels use: half the cores by default, never all of them.

Measured on the 2-core CI machine while other processes kept it busy (load average ~5),
SmolLM2-135M greedy decode of 64 tokens in-process, 2026-11-30: 1 thread took 0.10-0.12 s per
token and 2 threads 0.66-0.82 s per token; at batch 4, 0.23 s vs 0.67 s per step. OpenMP
threads that spin-wait for a core another process holds stall every op, so torch's default
(one thread per core) is the worst choice on a shared or small machine. The engine thread, the
gRPC event loop and Guardian's pool need cores too.
"""

from __future__ import annotations

import os

TORCH_THREADS_ENV = "LIL_SPARSE_TORCH_THREADS"
MAX_AUTO_THREADS = 8


def auto_torch_threads(cpu_count: int | None = None) -> int:
    """Half the cores, at least 1, at most 8 (past that small models gain nothing measurable)."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_THREADS, cores // 2))


def set_torch_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads: ``requested`` if > 0, else ``$LIL_SPARSE_TORCH_THREADS`` if
    set, else :func:`auto_torch_threads`. Returns the count set; ValueError for a bad value."""
    if requested < 0:
        raise ValueError(f"torch_threads: must be >= 0 (0: automatic), got {requested}")
    threads = requested
    if threads == 0 and os.environ.get(TORCH_THREADS_ENV):
        raw = os.environ[TORCH_THREADS_ENV]
        if not raw.isdigit():
            raise ValueError(f"torch_threads: {TORCH_THREADS_ENV} must be a whole number, got {raw!r}")
        threads = int(raw)
    threads = threads or auto_torch_threads()
    import torch

    torch.set_num_threads(threads)
    return threads
