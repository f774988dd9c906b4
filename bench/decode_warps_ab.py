"""``bench/decode_e2e.py`` with the batch-1 Triton decode at another warp count: an A/B harness.

The engine runs the Triton paged decode (:mod:`lil_sparse.kernels.paged_decode`) at
:class:`~lil_sparse.kernels.paged_decode.DecodeTiles`' default 4 warps per program. The
micro-benchmark (``bench/paged_decode_micro.py --sweep``) times a kernel and its merge back to
back; in a step they run beside the kernels PDL lets them overlap, and the two rankings can
differ. This runs ``bench/decode_e2e.py`` unchanged but for the tiles of
:func:`lil_sparse.kernels.fast_decode.step_tiles` that load 2 or more pages per loop step, which
get ``WARPS`` warps (the variants are built at their first use, inside the benchmark's warm-up
steps). Run it with ``WARPS`` 4 (the engine) and another value alternately, one process each:

    python bench/decode_warps_ab.py WARPS --json OUT.json [decode_e2e.py arguments]
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
from pathlib import Path

import lil_sparse.kernels.fast_decode as fast_decode
from lil_sparse.kernels.paged_decode import DecodeTiles


def main() -> None:
    if len(sys.argv) < 2 or not sys.argv[1].isdigit():
        raise SystemExit(__doc__)
    warps = int(sys.argv.pop(1))
    engine_rule = fast_decode.step_tiles

    def step_tiles(tiles: DecodeTiles, max_pages: int) -> DecodeTiles:
        chosen = engine_rule(tiles, max_pages)
        if chosen.block_pages < 2:
            return chosen
        return dataclasses.replace(chosen, warps=warps)

    fast_decode.step_tiles = step_tiles  # the backend imports it at each plan
    script = Path(__file__).with_name("decode_e2e.py")
    sys.argv[0] = str(script)
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
