"""Kernel time of one-token linear layers: cuBLAS (``F.linear``) against the Triton GEMV of
:mod:`lil_sparse.kernels.gemv`, on the weight shapes of the benchmark models, against the
bandwidth floor (weight + activation bytes in bf16 / the copy bandwidth of the same run).

Each figure is the median of ``--iters`` replays of a CUDA graph of ``--calls`` calls, each call
on its own copy of the weight (copies enough to overflow the 50 MB L2, so every call reads its
weight from HBM as in a decode step), divided by ``--calls``.

    python bench/gemv_micro.py [--models qwen1.5b,llama8b] [--sweep] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import copy_bandwidth_gbs, settle_cuda_graphs, write_markdown
from bench.model_shapes import MODELS
from lil_sparse.kernels.fused_layers import silu_mul
from lil_sparse.kernels.gemv import GemvTiles, choose_tiles, gemv, gemv_silu_mul
from lil_sparse.models.config import ModelConfig

L2_OVERFLOW_BYTES = 256 * 2**20


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


def graph_us(fn, calls: int, iters: int) -> float:
    """Median microseconds per call of ``fn(i)`` for i in range(calls), replayed as one graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(calls):
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


SWEEP = [
    GemvTiles(block_n, block_k, warps)
    for block_n, block_k, warps in itertools.product((1, 2, 4, 8), (256, 512, 1024, 2048, 4096), (4, 8))
]


def time_shape(
    n: int, k: int, has_bias: bool, calls: int, iters: int, sweep: bool, fused_silu: bool = False
) -> tuple[float, float, float, GemvTiles]:
    """(cuBLAS us, GEMV us with :func:`choose_tiles`, best swept us, its tiles) for one weight
    shape; ``fused_silu``: :func:`gemv_silu_mul` against ``F.linear`` then ``silu_mul``."""
    copies = max(2, -(-L2_OVERFLOW_BYTES // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) if has_bias else None
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    ref = F.linear(x.float(), weights[0].float(), None if bias is None else bias.float())
    if fused_silu:  # the timed kernel against the two it replaces, which it equals bit for bit
        tiles = choose_tiles(n, k)
        got = gemv_silu_mul(x, weights[0], tiles)
        if not torch.equal(got, silu_mul(gemv(x, weights[0], None, tiles))):
            raise RuntimeError(f"gemv_micro: [{n}, {k}]: gemv_silu_mul differs from gemv then silu_mul")
        ref, limit = silu_mul(ref.to(x.dtype)).float(), 2**-6  # two bf16 roundings, 2^-7 each
    else:
        got, limit = gemv(x, weights[0], bias), 2**-7
    error = ((got.float() - ref).abs() / (ref.abs() + 1)).max().item()
    if error > limit:  # a benchmark of a wrong kernel is worthless
        raise RuntimeError(f"gemv_micro: [{n}, {k}]: relative error {error:.2e}")

    def run(tiles: GemvTiles | None) -> float:
        if tiles is None and fused_silu:
            return graph_us(lambda i: silu_mul(F.linear(x, weights[i % copies])), calls, iters)
        if tiles is None:
            return graph_us(lambda i: F.linear(x, weights[i % copies], bias), calls, iters)
        if fused_silu:
            return graph_us(lambda i: gemv_silu_mul(x, weights[i % copies], tiles), calls, iters)
        return graph_us(lambda i: gemv(x, weights[i % copies], bias, tiles), calls, iters)

    cublas, chosen = run(None), choose_tiles(n // 2 if fused_silu else n, k)
    ours = run(chosen)
    swept = [(ours, chosen)]
    if sweep:
        swept += [(run(tiles), tiles) for tiles in SWEEP if tiles.block_k <= 2 * k]
        print("   fastest:", sorted(swept, key=lambda t: t[0])[:4], flush=True)
    best, best_tiles = min(swept, key=lambda t: t[0])
    return cublas, ours, best, best_tiles


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
            cublas, ours, best, best_tiles = time_shape(
                n, k, has_bias, args.calls, args.iters, args.sweep, fused_silu=name == SILU_MUL
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
