"""Policy groups on side streams (``lil_sparse.engine.side_streams``) change nothing but timing.

A mixed batch runs Quest's and InfLLM's scoring and selection on lanes of their own and H2O's
attention mass on another; each lane keeps its kernels in the one-stream order, so tokens and
every step's logits must equal the one-stream engine's bit for bit, eagerly and under CUDA graphs.
The lanes must really be used: the test counts the forks the steps made.
"""

from __future__ import annotations

import pytest
import torch

from lil_sparse.engine.side_streams import SideStreams
from tests.gpu.test_flashinfer_engine import make_engine, mixed_requests, record, recorded_rows, requests

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")


class CountingStreams(SideStreams):
    """:class:`SideStreams` that counts selection forks (by lane count) and observer forks."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.forks: dict[int, int] = {}
        self.observer_forks = 0

    def fork(self, count: int) -> list[torch.cuda.Stream]:
        self.forks[count] = self.forks.get(count, 0) + 1
        return super().fork(count)

    def observer(self) -> torch.cuda.Stream:
        self.observer_forks += 1
        return super().observer()


class SlowStreams(CountingStreams):
    """Lanes that start each fork with ~1 ms of spinning, so that they run well behind the step:
    a missing join, or an input freed while a lane still reads it, shows instead of hiding
    behind a tiny model's timing."""

    def fork(self, count: int) -> list[torch.cuda.Stream]:
        lanes = super().fork(count)
        for lane in lanes:
            with torch.cuda.stream(lane):
                torch.cuda._sleep(2_000_000)
        return lanes

    def observer(self) -> torch.cuda.Stream:
        lane = super().observer()
        with torch.cuda.stream(lane):
            torch.cuda._sleep(2_000_000)
        return lane


def use_streams(engine, streams: SideStreams | None) -> None:
    engine.runner.streams = streams
    if engine.runner.graphs is not None:
        engine.runner.graphs.streams = streams


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_side_streams_decode_bit_for_bit_as_one_stream(cuda_graphs, tiny_gqa2_dir):
    one = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=cuda_graphs)
    use_streams(one, None)
    lanes = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=cuda_graphs)
    streams = CountingStreams(torch.device("cuda"))
    use_streams(lanes, streams)
    one_logits, lane_logits = record(one), record(lanes)
    # max_batch_size 4: four of the five policies decode together, Quest and InfLLM among them.
    expected = one.generate(*mixed_requests((40, 33, 20, 40, 28)))
    got = lanes.generate(*mixed_requests((40, 33, 20, 40, 28)))
    assert recorded_rows(one_logits) == recorded_rows(lane_logits) == 40 + 33 + 20 + 40 + 28
    for want, have in zip(expected, got, strict=True):
        assert have.output_token_ids == want.output_token_ids
        assert have.kv == want.kv  # the pages attended, step by step
    assert all(torch.equal(a, b) for a, b in zip(one_logits.logits, lane_logits.logits, strict=True))
    assert torch.equal(one.runner.kv.attention_mass, lanes.runner.kv.attention_mass)  # H2O's, exactly
    assert streams.forks.get(2, 0) > 0  # Quest and InfLLM selected side by side
    assert streams.observer_forks > 0  # H2O's mass ran on its lane
    if cuda_graphs:
        stats = lanes.runner.graph_stats()
        assert stats["replays"] > stats["eager_steps"] > 0
    one.close()
    lanes.close()


def test_a_whole_step_group_stays_on_the_current_stream(tiny_gqa2_dir):
    """One policy for the whole step gains nothing from a lane (side_streams.py has the
    measurements): H2O's mass and Quest's selection run inline, with no fork. Three requests pad
    to a four-row step, so the group is not every row, but it is every sequence (``sole``)."""
    engine = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=True)
    streams = CountingStreams(torch.device("cuda"))
    use_streams(engine, streams)
    for policy in ("h2o", "quest"):
        reports = engine.generate(*requests(policy))
        assert [r.completion_tokens for r in reports] == [24] * len(reports)
    assert streams.forks == {} and streams.observer_forks == 0
    engine.close()


def test_late_lanes_are_joined_and_change_nothing(tiny_gqa2_dir):
    """With every lane running ~1 ms behind (eager steps), each step still ends with its lanes
    idle once the step's stream is done, and the outputs equal one stream's bit for bit."""
    one = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=False)
    use_streams(one, None)
    late = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=False)
    streams = SlowStreams(torch.device("cuda"))
    use_streams(late, streams)
    step = late.step
    checked = []

    def checked_step():
        events = step()
        torch.cuda.current_stream().synchronize()
        checked.append(all(lane.query() for lane in [streams.observer_lane, *streams._lanes]))
        return events

    late.step = checked_step  # type: ignore[method-assign]
    expected = one.generate(*mixed_requests((40, 33, 20, 40, 28)))
    got = late.generate(*mixed_requests((40, 33, 20, 40, 28)))
    for want, have in zip(expected, got, strict=True):
        assert have.output_token_ids == want.output_token_ids
    assert torch.equal(one.runner.kv.attention_mass, late.runner.kv.attention_mass)
    assert streams.forks.get(2, 0) > 0 and streams.observer_forks > 0
    assert len(checked) > 40 and all(checked)
    one.close()
    late.close()
