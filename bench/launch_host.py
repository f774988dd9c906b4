"""Host time of each eager operation an all-greedy decode step runs outside its CUDA graph.

``bench/host_phases.py`` splits a step's host time into phases; this times the primitives inside
the sampler's phase one by one, so a change can aim at the ones that cost: a pinned host tensor
(the tokens' landing buffer), a CUDA event made and recorded, the non-blocking copy to the host,
a device allocation, a one-element PyTorch kernel (the report's host probe), the argmax's first
Triton kernel launched through ``JITFunction.run`` (Triton's binder, cache key and launch
metadata every call) and the same compiled kernel launched directly
(``CompiledKernel[grid](*args)``, the binder skipped), and the whole greedy record
(:func:`~lil_sparse.kernels.row_argmax.greedy_record`: five allocations and two launches) with its
kernels launched through the JIT and directly (:mod:`lil_sparse.kernels.launcher`).

Each figure is the median host time of one call over ``--calls`` calls (after 50 warm-up calls),
timed with ``time.perf_counter`` around the call alone, synchronising every 100 calls so the
GPU's queue never fills. Host work, not GPU time: the kernels here take a few microseconds.

    python bench/launch_host.py --vocab 49152 --batches 1,8 --json /tmp/launch_host.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import triton

from bench.common import device_line, host_launch_us
from lil_sparse.kernels import launcher, row_argmax
from lil_sparse.kernels.pdl import launch_options, use_pdl

SYNC_EVERY = 100


def host_us(call: Callable[[], object], calls: int) -> float:
    """Median host time of ``call`` in us over ``calls`` calls (after 50 unmeasured)."""
    for _ in range(50):
        call()
    torch.cuda.synchronize()
    times = []
    for index in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if index % SYNC_EVERY == SYNC_EVERY - 1:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return statistics.median(times) * 1e6


def chunk_max_launches(logits: torch.Tensor) -> tuple[Callable[[], object], Callable[[], object] | None]:
    """The argmax's first kernel launched through Triton's JIT, and directly (None where this
    Triton's ``CompiledKernel`` does not take a grid and the bound arguments)."""
    rows, vocab = logits.shape
    chunks = triton.cdiv(vocab, row_argmax.BLOCK)
    partial_max = torch.empty((rows, chunks), dtype=torch.float32, device=logits.device)
    partial_index = torch.empty((rows, chunks), dtype=torch.int64, device=logits.device)
    partial_sum = torch.empty((rows, chunks), dtype=torch.float32, device=logits.device)
    args = (partial_max, partial_index, partial_sum, logits, logits, vocab, logits.stride(0), chunks)
    constexprs = {"BLOCK": row_argmax.BLOCK, "NOISE": False, "PDL": use_pdl(logits)}
    grid = (rows, chunks)

    def jit() -> object:
        return row_argmax._chunk_max[grid](logits, *args, **constexprs, num_warps=8, **launch_options(logits))

    compiled = jit()
    torch.cuda.synchronize()
    ordered = (logits, *args, *constexprs.values())
    try:
        launcher = compiled[(*grid, 1)]  # type: ignore[index]  # a CompiledKernel reads grid[2]
        launcher(*ordered)
        torch.cuda.synchronize()
    except Exception as error:  # another Triton's CompiledKernel API
        print(f"direct launch unavailable: {type(error).__name__}: {error}")
        return jit, None
    return jit, lambda: launcher(*ordered)


def batch_cases(batch: int, vocab: int, device: torch.device) -> dict[str, Callable[[], object] | None]:
    """The operations timed at ``batch`` rows of ``vocab`` logits (None: not available here)."""
    logits = torch.randn(batch, vocab, device=device)
    record = torch.empty((2, batch), dtype=torch.float64, device=device)
    host = torch.empty((2, batch), dtype=torch.float64, pin_memory=True)
    one = torch.zeros(1, device=device)
    jit, direct = chunk_max_launches(logits)

    def pinned() -> torch.Tensor:
        return torch.empty((2, batch), dtype=torch.float64, pin_memory=True)

    def event() -> None:
        torch.cuda.Event().record()

    reused = torch.cuda.Event()

    def event_again() -> None:
        reused.record()

    def copy() -> torch.Tensor:
        return host.copy_(record, non_blocking=True)

    def allocation() -> torch.Tensor:
        return torch.empty(batch, dtype=torch.int64, device=device)

    def add() -> torch.Tensor:
        return one.add_(1.0)

    def greedy() -> object:
        return row_argmax.greedy_record(logits)

    def greedy_jit() -> object:
        launcher.ENABLED = False
        try:
            return row_argmax.greedy_record(logits)
        finally:
            launcher.ENABLED = True

    return {
        "pinned host [2, B] float64": pinned,
        "event made and recorded": event,
        "event recorded again": event_again,
        "copy to pinned host, non-blocking": copy,
        "device [B] int64": allocation,
        "one-element add": add,
        "argmax first kernel, JIT launch": jit,
        "argmax first kernel, direct launch": direct,
        "greedy_record (5 allocations, 2 launches), JIT launches": greedy_jit,
        "greedy_record (5 allocations, 2 launches), direct launches": greedy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=49152, help="logits per row (SmolLM2: 49152)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.cuda.init()
    print(device_line())
    probe = host_launch_us(device)
    print(f"host probe: {probe:.2f} us per one-element kernel launch")
    results: dict[str, dict[str, float | None]] = {}
    for batch in (int(b) for b in args.batches.split(",")):
        row: dict[str, float | None] = {}
        for name, call in batch_cases(batch, args.vocab, device).items():
            row[name] = None if call is None else round(host_us(call, args.calls), 2)
            print(f"batch {batch}: {name}: {row[name]} us")
        results[f"batch {batch}"] = row
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device_line(), "host_probe_us": probe, "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
