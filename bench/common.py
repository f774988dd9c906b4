"""Shared benchmark helpers: CUDA-event timing, copy bandwidth, markdown tables."""

from __future__ import annotations

import datetime
import statistics
import sys
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


def copy_bandwidth_gbs(gib: float = 2.0) -> float:
    """Device-to-device copy bandwidth, bytes read plus written, in GB/s."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), iters=10)
    return 2 * gib * 2**30 / (ms * 1e-3) / 1e9


def device_line() -> str:
    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"


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
