"""bench/kernel_timeline.py: busy, idle and overlapped time of a step's kernels, by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

from bench.kernel_timeline import KernelSpan, format_timeline, kernel_spans, summarize


def test_serial_kernels_with_gaps():
    # a [0, 10), gap 2, b [12, 15), gap 5, a [20, 30)
    timeline = summarize([KernelSpan("a", 20, 30), KernelSpan("a", 0, 10), KernelSpan("b", 12, 15)])
    assert (timeline.span_us, timeline.busy_us, timeline.idle_us, timeline.summed_us) == (30, 23, 7, 23)
    a, b = timeline.rows
    assert (a.name, a.calls, a.mean_us, a.mean_gap_us) == ("a", 2, 10.0, 2.5)  # gaps 0 and 5
    assert (b.name, b.calls, b.mean_us, b.mean_gap_us) == ("b", 1, 3.0, 2.0)


def test_overlapping_kernels_count_once_and_gap_negative():
    # PDL: b starts 4 us before a ends and waits; c starts inside b.
    timeline = summarize([KernelSpan("a", 0, 10), KernelSpan("b", 6, 20), KernelSpan("c", 18, 19)])
    assert timeline.busy_us == 20 and timeline.idle_us == 0 and timeline.summed_us == 25
    gaps = {row.name: row.mean_gap_us for row in timeline.rows}
    assert gaps == {"a": 0.0, "b": -4.0, "c": -2.0}  # c against the latest end so far (b's 20)


def test_a_kernel_inside_a_longer_one_leaves_the_busy_time_alone():
    timeline = summarize(
        [KernelSpan("long", 0, 100), KernelSpan("short", 10, 20), KernelSpan("next", 105, 110)]
    )
    assert timeline.busy_us == 105 and timeline.idle_us == 5
    assert {r.name: r.mean_gap_us for r in timeline.rows}["next"] == 5.0  # after long's end, not short's


def test_empty_and_invalid():
    assert summarize([]).rows == () and summarize([]).span_us == 0.0
    with pytest.raises(ValueError, match="before start"):
        KernelSpan("x", 5, 4)


def test_report_is_per_step():
    spans = [KernelSpan("gemv", 10 * i, 10 * i + 8) for i in range(6)]
    text = format_timeline(summarize(spans), steps=3)
    assert text.startswith("per step over 3 steps: span 19.3 us, kernels running 16.0 us, idle 3.3 us")
    row = text.splitlines()[-1].split()
    assert row == ["gemv", "2.0", "8.00", "1.67"]  # gaps 0 then 2, 2, 2, 2, 2


def test_kernel_spans_keeps_cuda_events_only():
    def event(name, device, start, end):
        return SimpleNamespace(
            name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end)
        )

    spans = kernel_spans([event("aten::mm", DeviceType.CPU, 0, 50), event("_gemv", DeviceType.CUDA, 3, 9)])
    assert spans == [KernelSpan("_gemv", 3, 9)]
