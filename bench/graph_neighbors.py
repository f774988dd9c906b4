"""GPU time of a decode step's CUDA graph replayed with different eager work between replays.

The SmolLM2 batch-8 engine step ran 0.82 ms per token while its own graph, replayed back to back,
took 0.945 ms per replay (``bench/engine_step.py``, H200, 2026-12-01 20:55 UTC): the step, which
runs the greedy pick's two argmax kernels eagerly after each replay, ran faster than the graph
alone. This times ``--replays`` replays of a warmed engine's captured graph with, after each
replay, nothing, the engine's greedy pick (:func:`~lil_sparse.kernels.row_argmax.greedy_record`)
with and without programmatic dependent launch (PDL), one trivial Triton kernel with and without
PDL, or a one-element PyTorch kernel: GPU time per iteration between two CUDA events (the host
launches each iteration in well under the graph's time, so the GPU never waits for it).

    python bench/graph_neighbors.py MODEL.gguf [--batch 8] [--replays 50] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl

from bench.common import device_line, run_header, settle_cuda_graphs
from bench.engine_step import greedy_engine
from lil_sparse.engine import LLMEngine
from lil_sparse.kernels import pdl
from lil_sparse.kernels.row_argmax import greedy_record

WARMUP_STEPS = 24


@triton.jit
def _touch(x_ptr, PDL: tl.constexpr):
    pdl.wait_for_previous(PDL)
    tl.store(x_ptr, tl.load(x_ptr) + 1.0)


def warmed_engine(model_path: Path, batch: int) -> LLMEngine:
    """An engine (CUDA graphs, greedy, overlap on; :func:`bench.engine_step.greedy_engine`) after
    ``WARMUP_STEPS`` decode steps of ``batch`` requests: its step graph is captured."""
    engine = greedy_engine(model_path, batch, 3 * WARMUP_STEPS)
    for _ in range(WARMUP_STEPS):
        engine.step()
    return engine


def iteration_ms(replay: Callable[[], None], between: Callable[[], object] | None, replays: int) -> float:
    """GPU time per (replay, ``between``) iteration in ms over ``replays`` iterations."""
    for _ in range(3):
        replay()
        if between is not None:
            between()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        replay()
        if between is not None:
            between()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--replays", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every variant (median)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    settle_cuda_graphs()  # the graph replays as in a long-running process
    engine = warmed_engine(args.model, args.batch)
    graphs = engine.runner.graphs
    if graphs is None or not graphs.captured:
        raise SystemExit("the engine captured no graph")
    captured = next(reversed(graphs.captured.values()))
    logits = captured.logits
    scratch = torch.zeros(1, device="cuda")

    def with_pdl(enabled: bool, call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            pdl.ENABLED = enabled
            try:
                return call()
            finally:
                pdl.ENABLED = True

        return run

    def touch(enabled: bool) -> Callable[[], object]:
        options = {"launch_pdl": True} if enabled else {}
        return lambda: _touch[(1,)](scratch, PDL=enabled, **options)

    variants: dict[str, Callable[[], object] | None] = {
        "nothing (back to back)": None,
        "the greedy pick (two argmax kernels), PDL": lambda: greedy_record(logits),
        "the greedy pick, no PDL": with_pdl(False, lambda: greedy_record(logits)),
        "one trivial Triton kernel, PDL": touch(True),
        "one trivial Triton kernel, no PDL": touch(False),
        "one one-element PyTorch kernel": lambda: scratch.add_(1.0),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, between in variants.items():
            times[name].append(iteration_ms(captured.graph.replay, between, args.replays))
    engine.close()
    print(device_line())
    results = {}
    for name, values in times.items():
        results[name] = {"ms": statistics.median(values), "rounds_ms": [round(v, 4) for v in values]}
        print(
            f"batch {args.batch}, graph + {name}: {statistics.median(values):.4f} ms per iteration "
            f"(rounds {', '.join(f'{v:.4f}' for v in values)})",
            flush=True,
        )
    if args.json is not None:
        record = {
            **run_header(),
            "batch": args.batch,
            "results": results,
        }
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
