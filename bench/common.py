"""Shared benchmark helpers: CUDA-event timing, copy bandwidth, markdown tables, a child
process with empty kernel caches."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def cuda_ms(fn: Callable[[], object], iters: int = 20, warmup: int = 3) -> float:
    """Median GPU time of ``fn`` in milliseconds, one CUDA-event pair per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


SETTLE_GRAPHS = 4  # trivial graphs captured before any timed one (settle_cuda_graphs)


def settle_cuda_graphs(count: int = SETTLE_GRAPHS) -> None:
    """Capture, replay and drop ``count`` one-kernel CUDA graphs, so every graph a benchmark then
    times replays as in a process that has made many (a server captures one per step shape).

    Measured on the H200 (2026-11-30, torch 2.11 / CUDA 13.0, driver 580.159.04; an ad hoc
    script, printed output): in one process the first three CUDA graphs replayed the 8B batch-8
    32k quest@4096 step in 7.29 ms and every later one in 7.50 ms, with the same kernel times
    under the profiler (the extra time lies between the kernels). The switch follows the number
    of graphs made so far, not which are alive: three trivial graphs captured and dropped first
    made the first step graph slow, and CUDA_DEVICE_MAX_CONNECTIONS=1 or 32,
    CUDA_MODULE_LOADING=EAGER and CUDA_GRAPHS_USE_NODE_PRIORITY=1 did not change it. Without
    this, a run's figure depended on its position in its process (docs/gpu.md).
    """
    scratch = torch.zeros(1024, device="cuda")
    for _ in range(count):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            scratch.add_(1)
        graph.replay()
        del graph
    torch.cuda.synchronize()


def copy_bandwidth_gbs(gib: float = 2.0, rounds: int = 5) -> float:
    """Device-to-device copy bandwidth, bytes read plus written, in GB/s: the best of ``rounds``
    medians of 10 copies. One median read 4135-4247 GB/s in different processes on the same
    H200 (2026-12-01), and about 9% low late in a long process; the floors divide by this figure,
    so the best the device showed keeps them from moving with that noise (and never flatters a
    ratio to the floor: a higher bandwidth is a lower floor)."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = min(cuda_ms(lambda: dst.copy_(src), iters=10) for _ in range(rounds))
    return 2 * gib * 2**30 / (ms * 1e-3) / 1e9


HOST_PROBE_LAUNCHES = 200  # one-element kernels per probe round (host_launch_us)


def host_launch_us(device: torch.device, launches: int = HOST_PROBE_LAUNCHES, rounds: int = 5) -> float:
    """The host's time per launch of a one-element kernel on ``device`` (an in-place add), in
    microseconds: the median of ``rounds`` timed loops of ``launches``, the device drained before
    each. A probe of the host's speed for launch-bound work, which the engine step of a small
    model and the runner's host time follow: the same engine code's SmolLM2 batch-1 step read
    0.52 and 1.07 ms in two report runs of 2026-12-01 (docs/bench/graph_work_ab.md). A GPU
    kernel this small runs in about 2 us, under the host's launch time, so the loop never waits
    for the device."""
    x = torch.zeros(1, device=device)
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(launches):
            x.add_(1.0)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return statistics.median(times) / launches * 1e6


def device_line() -> str:
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"


def run_header() -> dict[str, str]:
    """The head of a results JSON: ``device`` (:func:`device_line`), ``date`` (UTC, to the
    minute) and ``command`` (this process's, as ``python ARGV``)."""
    return {
        "device": device_line(),
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "command": " ".join(["python", *sys.argv]),
    }


def write_markdown(
    path: Path, title: str, notes: Sequence[str], header: Sequence[str], rows: list[list]
) -> None:
    """A results file: title, device, date, command, notes, then one table."""
    lines = [
        f"# {title}",
        "",
        f"- device: {device_line()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `{' '.join(['python', *sys.argv])}`",
        *(f"- {n}" for n in notes),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def verdict(name: str, ok: bool, detail: str) -> str:
    line = f"TARGET {'met   ' if ok else 'MISSED'} {name}: {detail}"
    print(line, flush=True)
    return line


def run_with_empty_caches(argv: Sequence[str], flashinfer_base: str | None = None) -> dict:
    """Run ``python *argv`` in a child process as on a machine that never built a kernel: its
    Triton cache (``TRITON_CACHE_DIR``) is a new empty folder, and FlashInfer's JIT cache
    (``FLASHINFER_WORKSPACE_BASE``) too unless ``flashinfer_base`` names one to share between
    children. Returns the JSON object on the last line of its stdout. Raises RuntimeError with
    the end of the child's stderr when it fails or prints nothing."""
    with contextlib.ExitStack() as folders:
        triton_cache = folders.enter_context(tempfile.TemporaryDirectory())
        if flashinfer_base is None:
            flashinfer_base = folders.enter_context(tempfile.TemporaryDirectory())
        env = {**os.environ, "FLASHINFER_WORKSPACE_BASE": flashinfer_base, "TRITON_CACHE_DIR": triton_cache}
        out = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(
            f"child {' '.join(argv)} exited {out.returncode} printing {len(lines)} lines; its stderr "
            f"ends:\n{out.stderr[-4000:]}"
        )
    return json.loads(lines[-1])
