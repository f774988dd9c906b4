"""Host time of one CUDA-graph ``replay()``: a chain of N trivial Triton kernels (N = 1, 50, 200,
captured with and without programmatic dependent launch), and the decode step's own graph in
``bench/decode_e2e.py``'s run (the arguments after ours go to it; its 20th step's graph).

Each figure is the median host time of 35 replays (after 5), with the GPU idle before each
(``idle``: a synchronize before every replay) or busy with the replays before it (``busy``).
This is the whole of what launching a step's graph costs the host; the rest of a step's host time
is Python and the launches outside the graph (``bench/host_phases.py``).

    python bench/graph_launch_host.py --models qwen1.5b --contexts 4096 --batches 1 \
        --runs full:0 --steps 20 --selection when_faster --json /tmp/launch.json
"""

from __future__ import annotations

import runpy
import statistics
import sys
import time

import torch
import triton
import triton.language as tl

import lil_sparse.engine.cuda_graphs as cuda_graphs
from lil_sparse.kernels import pdl

REPLAYS = 40
_run = cuda_graphs.DecodeGraphs.run
_calls = [0]


def replay_host_us(graph: torch.cuda.CUDAGraph, busy: bool) -> float:
    torch.cuda.synchronize()
    times = []
    for _ in range(REPLAYS):
        if not busy:
            torch.cuda.synchronize()
        start = time.perf_counter()
        graph.replay()
        times.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return statistics.median(times[5:]) * 1e6


def timed_run(self: cuda_graphs.DecodeGraphs, step: cuda_graphs.DecodeStep) -> torch.Tensor:
    out = _run(self, step)
    _calls[0] += 1
    if _calls[0] == 20 and self.captured:
        graph = next(reversed(self.captured.values())).graph
        idle, busy = replay_host_us(graph, False), replay_host_us(graph, True)
        print(
            f"pdl={pdl.ENABLED} decode graph replay host: idle {idle:.1f} us, busy {busy:.1f} us", flush=True
        )
    return out


@triton.jit
def _touch(x_ptr, PDL: tl.constexpr):
    pdl.wait_for_previous(PDL)
    value = tl.load(x_ptr)
    tl.store(x_ptr, value + 1)


def synthetic(kernels: int, use_pdl: bool) -> None:
    x = torch.zeros(1, device="cuda")
    for _ in range(3):
        _touch[(1,)](x, PDL=use_pdl, launch_pdl=use_pdl)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(kernels):
            _touch[(1,)](x, PDL=use_pdl, launch_pdl=use_pdl)
    idle, busy = replay_host_us(graph, False), replay_host_us(graph, True)
    print(
        f"synthetic {kernels} kernels pdl={use_pdl}: replay host idle {idle:.1f} us, busy {busy:.1f} us",
        flush=True,
    )


def main() -> None:
    print(torch.cuda.get_device_name(), "CUDA", torch.version.cuda, flush=True)
    for kernels in (1, 50, 200):
        for use_pdl in (False, True):
            synthetic(kernels, use_pdl)
    cuda_graphs.DecodeGraphs.run = timed_run  # type: ignore[method-assign]
    sys.argv[0] = "bench/decode_e2e.py"
    runpy.run_path("bench/decode_e2e.py", run_name="__main__")


if __name__ == "__main__":
    main()
