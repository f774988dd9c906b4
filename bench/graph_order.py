"""Replay time of identical CUDA graphs by the order a process made them: a reproduction of the
"first three graphs replay faster" effect (``bench.common.settle_cuda_graphs``, docs/gpu.md), for
an upstream report.

One process captures ``--graphs`` graphs, each of the same ``--kernels`` tiny elementwise kernels
(``add_`` on a 4 KiB tensor), then times every graph: the median of ``--iters`` replays (CUDA
events around each replay) and the host time ``replay()`` takes to return, in the order the
graphs were made and again in reverse order (a graph's position in time, not its age, would show
as the same numbers both ways). On the H200 (torch 2.11, CUDA 13.0, driver 580.159.04), ad hoc
scripts of the same kind measured 327 us for a process's first graph of 400 kernels and 333-335 us
for later ones, with 4 us against 10-11 us of host time per launch (2026-11-30, printed output).
Its first run did not reproduce the effect: with the defaults every graph replayed in 342.5-344.4 us
and 7.4-9.2 us of host time, in both orders (H200, 2026-11-30 20:07 UTC, printed output). Tiny
``add_`` kernels are not enough to show it; the effect was seen with the decode step's graphs.

    python bench/graph_order.py [--graphs 6] [--kernels 400] [--iters 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def capture(kernels: int, scratch: torch.Tensor) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(kernels):
            scratch.add_(1.0)
    return graph


def time_graph(graph: torch.cuda.CUDAGraph, iters: int) -> tuple[float, float]:
    """(median GPU us per replay, median host us for ``replay()`` to return)."""
    graph.replay()
    torch.cuda.synchronize()
    gpu, host = [], []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        began = time.perf_counter()
        graph.replay()
        host.append((time.perf_counter() - began) * 1e6)
        end.record()
        end.synchronize()
        gpu.append(start.elapsed_time(end) * 1e3)
    return statistics.median(gpu), statistics.median(host)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--graphs", type=int, default=6)
    parser.add_argument("--kernels", type=int, default=400)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    scratch = torch.zeros(1024, device="cuda")
    scratch.add_(1.0)  # load the kernel before any capture
    torch.cuda.synchronize()
    graphs = [capture(args.kernels, scratch) for _ in range(args.graphs)]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    for label, order in (("made order", range(args.graphs)), ("reverse order", reversed(range(args.graphs)))):
        for index in order:
            gpu_us, host_us = time_graph(graphs[index], args.iters)
            print(f"{label}: graph {index} (made {index + 1}.): {gpu_us:.1f} us GPU, {host_us:.1f} us host")


if __name__ == "__main__":
    main()
