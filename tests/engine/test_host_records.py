"""The steps' reused host landing places (:class:`lil_sparse.engine.step_sampler.HostRecords`).

On CUDA every step's record lands in a pinned buffer taken from a ring per batch size; here the
ring runs with plain CPU tensors and no event, and a record whose place was reused before it was
read must raise rather than hand back another step's tokens.
"""

from __future__ import annotations

import pytest
import torch

from lil_sparse.engine.step_sampler import HostLanding, HostRecords, StepSampler, TokensInFlight
from lil_sparse.sampling import Sampler


def cpu_landing(rows: int) -> HostLanding:
    return HostLanding(torch.zeros((2, rows), dtype=torch.float64), None)  # type: ignore[arg-type]


def test_a_ring_per_batch_size_reuses_its_places_in_turn():
    records = HostRecords(cpu_landing)
    first = [records.take(3) for _ in range(HostRecords.RING)]
    assert len({id(place) for place in first}) == HostRecords.RING
    assert all(place.host.shape == (2, 3) for place in first)
    again = [records.take(3) for _ in range(2 * HostRecords.RING)]
    assert [id(place) for place in again] == [id(place) for place in first] * 2
    assert [place.uses for place in first] == [3] * HostRecords.RING
    other = records.take(5)  # another batch size has its own ring
    assert other.host.shape == (2, 5) and all(other is not place for place in first)


def test_a_record_read_after_its_place_was_reused_raises():
    records = HostRecords(cpu_landing)
    sampler = StepSampler(Sampler())
    place = records.take(1)
    place.host.copy_(torch.tensor([[7.0], [-0.5]], dtype=torch.float64))
    tokens = TokensInFlight(torch.tensor([7]), place.host, None, (place, place.uses))
    assert sampler.wait(tokens) == ([7], [-0.5])
    for _ in range(HostRecords.RING):  # the ring comes round to the same place
        records.take(1)
    with pytest.raises(RuntimeError, match="reused"):
        sampler.wait(tokens)
