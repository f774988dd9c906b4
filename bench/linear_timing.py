"""Timing of a Triton linear kernel against cuBLAS on one weight shape, shared by
``bench/gemv_micro.py`` (one row) and ``bench/skinny_micro.py`` (2-32 rows).

Each figure is the median of ``iters`` replays of a CUDA graph of ``calls`` calls, each call on
its own copy of the weight (copies enough to overflow the 50 MB L2, so every call reads its
weight from HBM as in a decode step), divided by ``calls``. Before timing, the kernel's output is
checked against the fp32 product (a benchmark of a wrong kernel is worthless), and its SiLU-mul
variant against the plain kernel then ``silu_mul``, bit for bit.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import triton

from lil_sparse.kernels.fused_layers import silu_mul

L2_OVERFLOW_BYTES = 256 * 2**20


def graph_us(fn: Callable[[int], object], calls: int, iters: int) -> float:
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


@dataclass(frozen=True)
class LinearKernel:
    """A kernel under test: ``linear(x, weight, bias, tiles)`` and ``silu_mul(x, gate_up, tiles)``
    (SiLU-mul in its epilogue), each equal to ``F.linear`` up to one rounding per output."""

    name: str
    linear: Callable[..., torch.Tensor]
    silu_mul: Callable[..., torch.Tensor]


def time_linear(
    kernel: LinearKernel,
    n: int,
    k: int,
    rows: int,
    has_bias: bool,
    chosen: Any,
    sweep: Sequence[Any],
    calls: int,
    iters: int,
    fused_silu: bool,
) -> tuple[float, float, float, Any]:
    """(cuBLAS us, ``kernel`` us with the ``chosen`` tiles, best us over ``chosen`` and ``sweep``,
    its tiles) for an ``[n, k]`` bf16 weight and ``rows`` token rows. ``fused_silu``: the
    SiLU-mul kernel against ``F.linear`` then ``silu_mul`` (``n`` counts the gate and up rows).
    Tiles that do not fit in shared memory are skipped. Raises RuntimeError if the kernel's
    output is wrong."""
    copies = max(2, -(-L2_OVERFLOW_BYTES // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(copies)]
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) if has_bias else None
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    ref = F.linear(x.float(), weights[0].float(), None if bias is None else bias.float())
    where = f"{kernel.name}: [{n}, {k}] x {rows} rows"
    if fused_silu:  # the timed kernel against the two it replaces, which it equals bit for bit
        got = kernel.silu_mul(x, weights[0], chosen)
        if not torch.equal(got, silu_mul(kernel.linear(x, weights[0], None, chosen))):
            raise RuntimeError(f"{where}: the SiLU-mul kernel differs from the kernel then silu_mul")
        ref, limit = silu_mul(ref.to(x.dtype)).float(), 2**-6  # two bf16 roundings, 2^-7 each
    else:
        got, limit = kernel.linear(x, weights[0], bias, chosen), 2**-7
    error = ((got.float() - ref).abs() / (ref.abs() + 1)).max().item()
    if error > limit:
        raise RuntimeError(f"{where}: relative error {error:.2e}")

    def run(tiles: Any) -> float:
        if tiles is None and fused_silu:
            return graph_us(lambda i: silu_mul(F.linear(x, weights[i % copies])), calls, iters)
        if tiles is None:
            return graph_us(lambda i: F.linear(x, weights[i % copies], bias), calls, iters)
        if fused_silu:
            return graph_us(lambda i: kernel.silu_mul(x, weights[i % copies], tiles), calls, iters)
        return graph_us(lambda i: kernel.linear(x, weights[i % copies], bias, tiles), calls, iters)

    cublas, ours = run(None), run(chosen)
    timed = [(ours, chosen)]
    for tiles in sweep:
        if tiles.block_k <= 2 * k:
            with contextlib.suppress(triton.runtime.errors.OutOfResources):  # shared memory
                timed.append((run(tiles), tiles))
    if sweep:
        print("   fastest:", sorted(timed, key=lambda t: t[0])[:4], flush=True)
    best, best_tiles = min(timed, key=lambda t: t[0])
    return cublas, ours, best, best_tiles
