"""H2O's attention mass observed once per step equals the mass observed layer by layer (GPU).

On CUDA the decode step keeps every layer's queries and the attention's log-sum-exp and, after
the last layer, adds the step's mass for all layers in two kernels
(:func:`lil_sparse.kernels.page_mass.add_page_mass_layers`) instead of one kernel per layer
(:func:`~lil_sparse.kernels.page_mass.add_page_mass`). The two differ only in fp32 rounding
(the step sums its layers before adding), so the pages kept, the tokens and the mass must match:
H2O alone (its group is the whole step) and in a mixed batch (its rows are a subset), eagerly
and under CUDA graphs.
"""

from __future__ import annotations

import pytest
import torch

from lil_sparse.kernels import page_mass
from lil_sparse.policies.base import SelectionPolicy
from lil_sparse.policies.h2o import H2OPolicy
from tests.gpu.test_flashinfer_engine import make_engine, mixed_requests, requests

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")


def counting(monkeypatch, name: str) -> list[int]:
    """Count the calls of ``page_mass.<name>`` (the real kernel still runs)."""
    calls: list[int] = []
    real = getattr(page_mass, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(page_mass, name, wrapper)
    return calls


@pytest.mark.parametrize("cuda_graphs", [False, True])
@pytest.mark.parametrize("mixed", [False, True])
def test_step_mass_equals_layer_by_layer(mixed, cuda_graphs, tiny_gqa2_dir, monkeypatch):
    # H2O (the third policy) decodes longest: pages freed when a request ends are zeroed when
    # another takes them, so the last one running keeps its mass for the check.
    work = mixed_requests((20, 24, 36, 30, 26)) if mixed else requests("h2o")
    per_step = counting(monkeypatch, "add_page_mass_layers")
    per_layer = counting(monkeypatch, "add_page_mass")

    stepped = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=cuda_graphs)
    want = stepped.generate(*work)
    assert per_step and not per_layer  # the step's pass ran, and no layer's
    mass = stepped.runner.kv.attention_mass.clone()
    stepped.close()

    # The same run observing layer by layer: the base class's observe_decode_layers calls
    # observe_decode once per layer, H2O's one-layer kernel.
    monkeypatch.setattr(H2OPolicy, "observe_decode_layers", SelectionPolicy.observe_decode_layers)
    per_step.clear()
    layered = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=cuda_graphs)
    got = layered.generate(*work)
    assert per_layer and not per_step
    for a, b in zip(want, got, strict=True):
        assert a.output_token_ids == b.output_token_ids
        assert a.kv == b.kv  # the pages each step attended: the same evictions
    assert mass.abs().sum() > 0
    torch.testing.assert_close(layered.runner.kv.attention_mass, mass, rtol=1e-5, atol=1e-6)
    layered.close()
