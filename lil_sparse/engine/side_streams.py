"""CUDA streams for a decode step's independent per-policy kernels.

In a mixed decode step each selecting policy group (Quest, InfLLM) scores and selects its own
rows, and H2O adds the attention mass of its rows after the attention: kernels that read shared
inputs but write disjoint outputs, and that are latency-bound (tens of CTAs, about 15-30 us each
on the H200; ``docs/bench/profile_mixed_llama8b_32768_6.txt``). On one stream they run one after
another. Here each group's selection runs on a lane of its own, forked from the current stream
and joined back before the attention reads the page lists, and the attention-mass observers run
on a further lane that is joined once at the end of the step, so they overlap the layer's
projections and MLP. (H2O now observes once per step, after the last layer's attention, so its
lane overlaps only that layer's projections and MLP; the figures below were measured when it
observed after every layer.)

Lanes are used only in a mixed step: one group that is the whole step runs on the current
stream, since a fork and join cost about 2-3 us of each layer's critical path. Measured on the
H200 (2026-11-30, ``bench/decode_e2e.py --models llama8b --contexts 32768 --batches 8 --mixed 6
--selection exact``, ``--side-streams`` against ``--no-side-streams``; medians of 20-30 steps):
the mixed step (6 requests per policy) took 17.64 ms with lanes and 18.63 ms without (16:19 UTC);
with selection lanes only, moving the mass to its lane took it from 18.10 / 18.08 to 17.86 /
17.84 ms (two repeats, 16:25), while a batch-8 H2O step, whose one group is the whole step, took
6.60 / 6.59 ms with its mass on a lane and 6.53 / 6.53 ms inline. A lane for the K/V append beside
one group's selection cost 0.09 ms per step (Quest 7.49 against 7.40 ms, two repeats, 16:23) and
is not used.

Forks and joins are ``Stream.wait_stream`` (events, no host sync), so the same code runs eagerly
and under CUDA-graph capture, where the lanes become parallel branches of the graph (PyTorch
allocates a joined side stream's tensors from the graph's pool). Each lane keeps its own kernels
in order, so results are bit-identical to the one-stream order: groups write disjoint rows of the
page list, and the mass lane adds the step's mass as the current stream would.
"""

from __future__ import annotations

import torch


class SideStreams:
    """Lanes for the policy groups of a decode step, plus one for attention-mass observers.

    ``device``: the CUDA device of the step. Streams come from PyTorch's pool (shared round
    robin with the rest of the process: a lane that happens to be another stream only serialises
    work) on first use and are kept for the runner's lifetime.
    """

    def __init__(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"SideStreams: needs a CUDA device, got {device}")
        self.device = device
        self._lanes: list[torch.cuda.Stream] = []
        self.observer_lane = torch.cuda.Stream(device)

    def fork(self, count: int) -> list[torch.cuda.Stream]:
        """``count`` selection lanes, each ordered after the work queued so far on the current
        stream."""
        while len(self._lanes) < count:
            self._lanes.append(torch.cuda.Stream(self.device))
        lanes = self._lanes[:count]
        current = torch.cuda.current_stream(self.device)
        for lane in lanes:
            lane.wait_stream(current)
        return lanes

    def observer(self) -> torch.cuda.Stream:
        """The observers' lane, ordered after the work queued so far on the current stream."""
        self.observer_lane.wait_stream(torch.cuda.current_stream(self.device))
        return self.observer_lane

    def join(self, lanes: list[torch.cuda.Stream]) -> None:
        """Order the current stream after everything queued so far on ``lanes``."""
        current = torch.cuda.current_stream(self.device)
        for lane in lanes:
            current.wait_stream(lane)
