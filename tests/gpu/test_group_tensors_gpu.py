"""Policy groups' tensors kept from step to step (:class:`GroupTensors`) on the GPU engine.

With CUDA graphs the kept tensors must equal the ones built anew at every step, through page
growth, H2O's evictions and slots taken over by new requests; replays must skip the copies of
kept inputs (the point of keeping them); and every decode step's logits must equal, bit for
bit, those of the engine with graphs off, in runs without the per-step check (which syncs with
the device and would hide an ordering fault between the host and the step launched ahead)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gpu_engine import gpu_engine

from lil_sparse.engine.cuda_graphs import CapturedStep
from lil_sparse.testing.group_check import check_kept_groups, group_workload

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("flashinfer")


def run(model_dir: Path, cuda_graphs: bool, check: bool, monkeypatch: pytest.MonkeyPatch):
    """The reports, every decode call's logits (cloned on the device), the check's findings and
    how many of a replay's inputs were skipped as the very tensors copied the step before."""
    engine = gpu_engine(model_dir, cuda_graphs=cuda_graphs)
    runner = engine.runner
    found = check_kept_groups(runner) if check else []
    logits: list[torch.Tensor] = []
    decode = runner.decode

    def recording_decode(seqs, **kwargs):
        out = decode(seqs, **kwargs)
        logits.append(out.clone())  # a device copy: no sync
        return out

    skipped = [0]
    load = CapturedStep.load

    def counting_load(self, step):
        if self.sources:
            skipped[0] += sum(fresh is kept for fresh, kept in zip(step.tensors(), self.sources, strict=True))
        load(self, step)

    runner.decode = recording_decode  # type: ignore[method-assign]
    monkeypatch.setattr(CapturedStep, "load", counting_load)
    reports = engine.generate(*group_workload(max_token=384))
    replays = runner.graph_stats()["replays"]
    engine.close()
    return reports, logits, [entry for entry in found if entry != "checked"], skipped[0], replays


def test_kept_group_tensors_on_the_gpu(tiny_gqa2_dir, monkeypatch):
    eager_reports, eager_logits, _, _, _ = run(tiny_gqa2_dir, False, False, monkeypatch)
    reports, logits, _, skipped, replays = run(tiny_gqa2_dir, True, False, monkeypatch)
    assert replays > 0 and skipped > 0
    assert len(logits) == len(eager_logits)
    assert all(torch.equal(a, b) for a, b in zip(logits, eager_logits, strict=True))
    for want, have in zip(eager_reports, reports, strict=True):
        assert have.output_token_ids == want.output_token_ids
    _, _, found, _, _ = run(tiny_gqa2_dir, True, True, monkeypatch)
    assert found == []
