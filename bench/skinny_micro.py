"""Kernel time of few-token linear layers (2-32 rows, a decode step at batch 2-32): cuBLAS
(``F.linear``) against the Triton skinny GEMM of :mod:`lil_sparse.kernels.skinny_gemm`, on the
weight shapes of the benchmark models, against the bandwidth floor (weight + activation bytes
in bf16 / the copy bandwidth of the same run).

Figures as in ``bench/gemv_micro.py`` (``bench/linear_timing.py``): the median of ``--iters``
replays of a CUDA graph of ``--calls`` calls, each on its own copy of the weight, divided by
``--calls``. ``--sweep`` also times every tile of ``SWEEP`` at each row count and
prints the fastest four.

    python bench/skinny_micro.py [--models qwen1.5b,llama8b] [--rows 2,4,8,16] [--sweep] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from bench.common import copy_bandwidth_gbs, settle_cuda_graphs, write_markdown
from bench.gemv_micro import SILU_MUL, layer_shapes
from bench.linear_timing import LinearKernel, time_linear
from bench.model_shapes import MODELS
from lil_sparse.kernels.skinny_gemm import (
    SkinnyTiles,
    choose_skinny_silu_tiles,
    choose_skinny_tiles,
    skinny_linear,
    skinny_pays,
    skinny_silu_mul,
)

SWEEP = [
    SkinnyTiles(block_n, block_k, warps, stages)
    for block_n, block_k, warps, stages in itertools.product((16, 32, 64), (64, 128, 256), (4, 8), (3, 5))
]


SKINNY = LinearKernel("skinny_gemm", skinny_linear, skinny_silu_mul)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="qwen1.5b,llama8b")
    parser.add_argument("--rows", default="2,4,8,16")
    parser.add_argument("--linears", default="qkv,o_proj,gate_up+silu_mul,down,lm_head")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--sweep", action="store_true", help="also time every tile in SWEEP")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settle_cuda_graphs()
    bandwidth = copy_bandwidth_gbs()
    print(f"copy bandwidth {bandwidth:.0f} GB/s", flush=True)
    table = []
    wanted = args.linears.split(",")
    for model in args.models.split(","):
        for name, (n, k, has_bias) in layer_shapes(MODELS[model]).items():
            if name not in wanted:
                continue
            for rows in map(int, args.rows.split(",")):
                floor = (n * k + rows * (k + n)) * 2 / (bandwidth * 1e3)
                fused = name == SILU_MUL
                chosen = choose_skinny_silu_tiles(k) if fused else choose_skinny_tiles(k, rows)
                cublas, ours, best, best_tiles = time_linear(
                    SKINNY,
                    n,
                    k,
                    rows,
                    has_bias,
                    chosen,
                    SWEEP if args.sweep else [],
                    args.calls,
                    args.iters,
                    fused,
                )
                swept = (f"{best:.1f}", best_tiles) if args.sweep else ("-", "-")
                runs = "skinny" if skinny_pays(n // 2 if name == SILU_MUL else n, k, rows) else "cuBLAS"
                row = [model, name, f"{n} x {k}", rows, runs, f"{floor:.1f}", f"{cublas:.1f}", f"{ours:.1f}",
                       f"{cublas / ours:.2f}", f"{ours / floor:.2f}", *swept]  # fmt: skip
                print(" | ".join(map(str, row)), flush=True)
                table.append(row)
    if args.out:
        notes = [
            f"copy bandwidth {bandwidth:.0f} GB/s (read + write); floor: weight, bias and activation bytes",
            f"us per call: median of {args.iters} replays of a CUDA graph of {args.calls} calls",
        ]
        header = ["model", "linear", "N x K", "rows", "linear() runs", "floor us", "cuBLAS us", "skinny us",
                  "cuBLAS / skinny", "skinny / floor", "best swept us", "best swept tiles"]  # fmt: skip
        write_markdown(
            args.out, "Few-token linear layers: cuBLAS against the Triton skinny GEMM", notes, header, table
        )


if __name__ == "__main__":
    main()
