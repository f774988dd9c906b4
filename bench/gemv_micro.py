"""Kernel time of one-token linear layers: cuBLAS (``F.linear``) against the Triton GEMV of
:mod:`lil_sparse.kernels.gemv`, on the weight shapes of the benchmark models, against the
bandwidth floor (weight + activation bytes in bf16 / the copy bandwidth of the same run).

Each figure is the median of ``--iters`` replays of a CUDA graph of ``--calls`` calls, each call
on its own copy of the weight, divided by ``--calls`` (``bench/linear_timing.py``).

    python bench/gemv_micro.py [--models qwen1.5b,llama8b] [--sweep] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from bench.common import copy_bandwidth_gbs, settle_cuda_graphs, write_markdown
from bench.linear_timing import LinearKernel, time_linear
from bench.model_shapes import MODELS
from lil_sparse.kernels.gemv import GemvTiles, choose_tiles, gemv, gemv_silu_mul
from lil_sparse.models.config import ModelConfig

SILU_MUL = "gate_up+silu_mul"  # gemv_silu_mul against F.linear then silu_mul; N is the gate/up rows


def layer_shapes(config: ModelConfig) -> dict[str, tuple[int, int, bool]]:
    """name -> (N, K, has bias) of every linear in a decode step, as the fused model runs them
    (the gate/up projection both alone and with its SiLU-mul, as the model runs it)."""
    q = config.num_heads * config.head_dim
    kv = config.num_kv_heads * config.head_dim
    return {
        "qkv": (q + 2 * kv, config.hidden_size, config.attention_bias),
        "o_proj": (config.hidden_size, q, False),
        "gate_up": (2 * config.intermediate_size, config.hidden_size, False),
        SILU_MUL: (2 * config.intermediate_size, config.hidden_size, False),
        "down": (config.hidden_size, config.intermediate_size, False),
        "lm_head": (config.vocab_size, config.hidden_size, False),
    }


SWEEP = [
    GemvTiles(block_n, block_k, warps)
    for block_n, block_k, warps in itertools.product((1, 2, 4, 8), (256, 512, 1024, 2048, 4096), (4, 8))
]


GEMV = LinearKernel("gemv", gemv, gemv_silu_mul)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="qwen1.5b,llama8b")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--sweep", action="store_true", help="also time every tile in SWEEP")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settle_cuda_graphs()
    bandwidth = copy_bandwidth_gbs()
    print(f"copy bandwidth {bandwidth:.0f} GB/s", flush=True)
    table = []
    for model in args.models.split(","):
        for name, (n, k, has_bias) in layer_shapes(MODELS[model]).items():
            floor = (n * k + k + n) * 2 / (bandwidth * 1e3)
            chosen = choose_tiles(n // 2 if name == SILU_MUL else n, k)
            cublas, ours, best, best_tiles = time_linear(
                GEMV,
                n,
                k,
                1,
                has_bias,
                chosen,
                SWEEP if args.sweep else [],
                args.calls,
                args.iters,
                fused_silu=name == SILU_MUL,
            )
            swept = (f"{best:.1f}", best_tiles) if args.sweep else ("-", "-")  # only a sweep has a best
            row = [model, name, f"{n} x {k}", f"{floor:.1f}", f"{cublas:.1f}", f"{ours:.1f}",
                   f"{cublas / ours:.2f}", f"{ours / floor:.2f}", *swept]  # fmt: skip
            print(" | ".join(map(str, row)), flush=True)
            table.append(row)
    if args.out:
        notes = [
            f"copy bandwidth {bandwidth:.0f} GB/s (read + write); floor: weight, bias and activation bytes",
            f"us per call: median of {args.iters} replays of a CUDA graph of {args.calls} calls",
        ]
        header = ["model", "linear", "N x K", "floor us", "cuBLAS us", "gemv us", "cuBLAS / gemv",
                  "gemv / floor", "best swept us", "best swept tiles"]  # fmt: skip
        write_markdown(
            args.out, "One-token linear layers: cuBLAS against the Triton GEMV", notes, header, table
        )


if __name__ == "__main__":
    main()
