"""Where a profiled step's GPU time goes between kernels: busy, idle and overlapped.

The profiler's table (``key_averages``) sums each kernel's own duration. Under programmatic
dependent launch a kernel starts during the tail of the one before and waits inside
(``griddepcontrol.wait``), so its duration includes that wait and the table's sum exceeds the
step; without PDL the gaps between kernels (launch latency, a drained grid) appear in no row at
all. This summary reads the kernels' start and end times instead (one CUDA stream's kernels, as a
decode step runs them) and reports, per kernel name, the calls, the mean duration and the mean
gap from the previous kernel's end to its start (negative: it started before that kernel ended,
as PDL lets it), and for the whole span the time some kernel ran (the union of the intervals)
and the idle time (the span less that union). Kernels of other streams (a mixed batch's side
streams) count as overlap. Memcpy and memset events count as kernels: they occupy the stream.

``bench/decode_e2e.py --profile DIR`` writes it beside each profile table.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KernelSpan:
    """One kernel execution: ``name``, ``start`` and ``end`` in microseconds (``end >= start``)."""

    name: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"KernelSpan {self.name!r}: end {self.end} before start {self.start}")


@dataclass(frozen=True)
class KernelRow:
    """Per kernel name: ``calls``, mean duration and mean gap before it (us)."""

    name: str
    calls: int
    mean_us: float
    mean_gap_us: float


@dataclass(frozen=True)
class Timeline:
    """``span_us`` from the first start to the last end; ``busy_us`` the union of the kernels'
    intervals; ``idle_us = span_us - busy_us``; ``summed_us`` the sum of every kernel's duration
    (more than ``busy_us`` where kernels overlap); ``rows`` by total duration, largest first."""

    span_us: float
    busy_us: float
    idle_us: float
    summed_us: float
    rows: tuple[KernelRow, ...]


def summarize(spans: Iterable[KernelSpan]) -> Timeline:
    """The :class:`Timeline` of ``spans`` (any order; sorted by start here). The gap before a
    kernel is its start less the latest end of the kernels that started before it, so a kernel
    that starts inside an earlier one has a negative gap. Empty input: all zeros, no rows."""
    ordered = sorted(spans, key=lambda s: (s.start, s.end))
    if not ordered:
        return Timeline(0.0, 0.0, 0.0, 0.0, ())
    busy = 0.0
    latest_end = ordered[0].start  # the latest end of the kernels so far (the first has gap 0)
    stats: dict[str, list[float]] = {}  # name -> [calls, total duration, total gap]
    for span in ordered:
        row = stats.setdefault(span.name, [0, 0.0, 0.0])
        row[0] += 1
        row[1] += span.end - span.start
        row[2] += span.start - latest_end
        busy += max(0.0, span.end - max(span.start, latest_end))
        latest_end = max(latest_end, span.end)
    span_us = latest_end - ordered[0].start
    rows = tuple(
        KernelRow(name, int(calls), total / calls, gaps / calls)
        for name, (calls, total, gaps) in sorted(stats.items(), key=lambda item: -item[1][1])
    )
    summed = sum(s.end - s.start for s in ordered)
    return Timeline(span_us, busy, span_us - busy, summed, rows)


def format_timeline(timeline: Timeline, steps: int, limit: int = 25) -> str:
    """A plain-text report of ``timeline`` over ``steps`` profiled steps (figures per step)."""
    per = max(steps, 1)
    lines = [
        f"per step over {steps} steps: span {timeline.span_us / per:.1f} us, kernels running "
        f"{timeline.busy_us / per:.1f} us, idle {timeline.idle_us / per:.1f} us, kernel durations "
        f"summed {timeline.summed_us / per:.1f} us",
        "",
        f"{'kernel':60s} {'calls/step':>10s} {'mean us':>9s} {'mean gap us':>12s}",
    ]
    for row in timeline.rows[:limit]:
        lines.append(
            f"{row.name[:60]:60s} {row.calls / per:10.1f} {row.mean_us:9.2f} {row.mean_gap_us:12.2f}"
        )
    return "\n".join(lines) + "\n"


def kernel_spans(events: Sequence[object]) -> list[KernelSpan]:
    """The CUDA device events (kernels, memcpy, memset) among a ``torch.profiler`` run's
    ``events()``, as :class:`KernelSpan` in the profiler's microseconds."""
    from torch.autograd import DeviceType

    return [
        KernelSpan(e.name, e.time_range.start, e.time_range.end)  # type: ignore[attr-defined]
        for e in events
        if getattr(e, "device_type", None) == DeviceType.CUDA
    ]
