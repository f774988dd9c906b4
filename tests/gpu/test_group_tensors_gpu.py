"""Policy groups' tensors kept from step to step (:class:`GroupTensors`) on the GPU engine with
CUDA graphs: at every step the kept tensors equal the ones built anew, through page growth,
H2O's evictions and slots taken over by new requests, and the tokens equal those of the engine
with graphs off (whose eager steps read the kept tensors directly)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gpu_engine import gpu_engine

from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions
from lil_sparse.testing.group_check import check_kept_groups

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("flashinfer")


def run(model_dir: Path, cuda_graphs: bool):
    engine = gpu_engine(model_dir, cuda_graphs=cuda_graphs)
    runner = engine.runner
    found = check_kept_groups(runner)
    gen = torch.Generator().manual_seed(7)
    lengths, new_tokens = (40, 75, 21, 58, 33, 90), (40, 24, 60, 18, 35, 20)
    policies = ("h2o", "quest", "infllm", "h2o", "quest", "h2o")
    prompts = [torch.randint(3, 384, (n,), generator=gen).tolist() for n in lengths]
    options = [
        RequestOptions(
            stopping=StoppingOptions(max_new_tokens=n, ignore_eos=True),
            sparse=SparseOptions(policy=policy, budget_tokens=32, sink_tokens=16, dense_layers=1),
        )
        for policy, n in zip(policies, new_tokens, strict=True)
    ]
    reports = engine.generate(prompts, options)
    stats, kept = runner.graph_stats(), runner.group_tensors
    engine.close()
    return reports, [entry for entry in found if entry != "checked"], stats, kept


def test_kept_group_tensors_on_the_gpu_equal_fresh_ones_and_change_no_token(tiny_gqa2_dir):
    eager_reports, eager_mismatches, _, _ = run(tiny_gqa2_dir, cuda_graphs=False)
    reports, mismatches, stats, kept = run(tiny_gqa2_dir, cuda_graphs=True)
    assert eager_mismatches == [] and mismatches == []
    assert stats["replays"] > 0 and kept.reused > kept.built > 0
    for want, have in zip(eager_reports, reports, strict=True):
        assert have.output_token_ids == want.output_token_ids
