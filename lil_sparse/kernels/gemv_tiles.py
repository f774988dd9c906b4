"""Launch shapes of the one-row GEMV (:mod:`lil_sparse.kernels.gemv`): :class:`GemvTiles` and
:func:`choose_tiles`, the rule each weight shape's tiles come from, with the sweeps behind it.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton

MAX_PREFETCH = 2
"""At most this many leading ``block_k`` weight tiles load before the PDL wait."""


@dataclass(frozen=True)
class GemvTiles:
    """Launch shape: ``block_n`` weight rows per program, ``block_k`` columns per loop step,
    ``warps`` per program (all positive powers of two), and ``prefetch``: how many of a program's
    leading weight tiles it loads before waiting for the previous kernel (0 to
    :data:`MAX_PREFETCH`; only launches with PDL start early enough for it to matter)."""

    block_n: int
    block_k: int
    warps: int
    prefetch: int = MAX_PREFETCH

    def __post_init__(self) -> None:
        for name in ("block_n", "block_k", "warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"GemvTiles.{name} must be a positive power of two, got {value}")
        if not 0 <= self.prefetch <= MAX_PREFETCH:
            raise ValueError(f"GemvTiles.prefetch must be in 0..{MAX_PREFETCH}, got {self.prefetch}")


def choose_tiles(n: int, k: int) -> GemvTiles:
    """Tiles for a ``[n, k]`` weight, from sweeps of ``bench/gemv_micro.py --sweep`` on the H200
    (2026-11-30): every program loads its first two weight tiles before the PDL wait
    (``prefetch``), which moved the best tiles of the 1.5B shape (sweep at about 23:50 UTC, CUDA
    graphs of repeated calls, PDL on, against the earlier rule's tiles):

    - short rows (``k < 4096``) of fewer than 4096 outputs (QKV, output projection): 2048-column
      steps (the whole row at 1.5B's 1536), 8 warps, 4 rows per program from 2048 outputs, else 2
      (2.9 against 3.7 us and 2.3 against 3.0 at 1.5B);
    - short rows of 4096 to 16383 outputs (the 1.5B gate/up halves of
      :func:`~lil_sparse.kernels.gemv.gemv_silu_mul`): one row, 512-column steps, 4 warps (14.0
      against 14.9 us);
    - short rows of 16384 outputs or more (LM head, the plain gate/up): 4 rows, 1024-column steps,
      4 warps (104.5 against 105.2 us for the LM head: within noise, unchanged);
    - long rows (``k >= 8192``) of fewer than 4096 outputs (the 1.5B down projection): 8 rows,
      2048-column steps, 8 warps (7.7 against 8.7 us).

    The 8B shape keeps the tiles of the sweep before prefetching, not re-swept: for rows of 4096
    to 8191 columns one row per program, 1024-column steps, 8 warps and no prefetch; for its down
    projection the same with 4 warps, prefetched. Against the report run before prefetching
    (22:29 UTC; cuBLAS within 0.6 us of it on every 8B row), the 00:08 run (2026-12-01,
    ``docs/bench/gemv_micro.md``) with prefetch everywhere had the 8B down projection at 27.8
    against 32.5 us but QKV 13.4 against 12.7, output 9.4 against 9.0, gate/up with SiLU-mul 61.2
    against 53.1 and the LM head 248.0 against 229.9; every 8B batch-1 cell of the 00:07 report
    (with the norm inside the 8B QKV GEMV too) ran 0.32-0.41 ms slower than at 23:30. These
    tiles are not yet measured end to end.

    A persistent grid (a fixed number of programs per SM looping over the row blocks, each
    loading the next block's leading tiles before reducing the current one) lost on every 1.5B
    shape (H200, 2026-12-01 07:50 UTC: down 8.40 against 8.02 us, gate/up with SiLU-mul 15.22
    against 13.89, LM head 107.5 against 104.1; docs/bench/history.md), so there is none."""
    prefetch = MAX_PREFETCH
    if k < 4096 and n < 4096:
        block_n, block_k, warps = (4 if n >= 2048 else 2), min(2048, triton.next_power_of_2(k)), 8
    elif k < 4096:
        block_n, block_k, warps = (4, 1024, 4) if n >= 16384 else (1, 512, 4)
    elif k >= 8192:
        block_n, block_k, warps = (8, 2048, 8) if n < 4096 else (1, 1024, 4)
    else:
        block_n, block_k, warps, prefetch = 1, 1024, 8, 0
    block_k = min(block_k, triton.next_power_of_2(k))
    return GemvTiles(block_n, block_k, warps, prefetch=min(prefetch, triton.cdiv(k, block_k)))
