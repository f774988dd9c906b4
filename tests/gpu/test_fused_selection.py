"""The fused selection path (scores -> one top-k kernel writing FlashInfer's page list) against the
PyTorch reference path (``torch.topk``, gathers, a page-id copy and the CSR repack), on the same
queries in the same step.

Every selecting layer of every eager decode step of a real engine run is checked twice: the
fused ``DecodeAttention._select`` writes the slot's CSR list, then the reference builds its page
ids for the very same ``q`` and they are packed with the layout's positions. Per row the two
lists must hold the same pages (the fused list is in slot order, the reference's best first) and
end with the same newest page. Mixed batches (every policy at once, Quest rows with different
dense-layer counts) cover groups that are not the whole step and the per-row dense layers.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from gpu_engine import gpu_engine

from lil_sparse.engine import LLMEngine
from lil_sparse.engine.step_attention import DecodeAttention
from lil_sparse.options import POLICY_NAMES, RequestOptions, SparseOptions, StoppingOptions

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")
pytest.importorskip("triton")


class SelectionCheck:
    """Wraps ``DecodeAttention._select``: after the fused selection, compares the slot's CSR
    segments with the reference selection for the same inputs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.layers_checked = 0
        self.rows_checked = 0
        fused = DecodeAttention._select
        check = self

        def select(attention: DecodeAttention, layer: int, q_rows: torch.Tensor) -> torch.Tensor:
            page_ids = fused(attention, layer, q_rows)
            groups = [
                g for g in attention.groups if g.policy.selects_per_layer and layer >= g.min_dense_layers
            ]
            if groups:
                check.compare(attention, layer, q_rows, groups)
            return page_ids

        monkeypatch.setattr(DecodeAttention, "_select", select)

    def compare(self, attention: DecodeAttention, layer: int, q_rows: torch.Tensor, groups) -> None:
        layout = attention.layer_layouts[layer]
        indptr, indices = attention.backend.selection_target(attention.base_page_ids, layout)
        fused = indices[: layout.nnz].clone()
        reference_ids = attention._select_reference(layer, q_rows, groups)
        reference = reference_ids[:, : layout.width].reshape(-1)[layout.flat_positions]
        bounds = indptr[: layout.rows + 1].tolist()
        fused_rows = [fused[a:b].tolist() for a, b in itertools.pairwise(bounds)]
        reference_rows = [reference[a:b].tolist() for a, b in itertools.pairwise(bounds)]
        for got, want in zip(fused_rows, reference_rows, strict=True):
            assert got[-1] == want[-1]  # the newest page last: last_page_len applies to it
            assert sorted(got) == sorted(want)
        self.layers_checked += 1
        self.rows_checked += len(fused_rows)


def run(model_dir, options: list[RequestOptions], prompts: list[list[int]]) -> LLMEngine:
    engine = gpu_engine(model_dir, kv_cache_tokens=8192, max_batch_size=8, cuda_graphs=False)
    reports = engine.generate(prompts, options)
    assert [r.completion_tokens for r in reports] == [o.stopping.max_new_tokens for o in options]
    engine.close()
    return engine


def options_for(policy: str, dense_layers: int, max_new: int) -> RequestOptions:
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=max_new, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=64, sink_tokens=16, dense_layers=dense_layers),
    )


@pytest.mark.parametrize("model", ["tiny_gqa2_dir", "tiny_gqa8_dir"])
def test_fused_selection_picks_the_reference_pages(model, request, monkeypatch):
    check = SelectionCheck(monkeypatch)
    gen = torch.Generator().manual_seed(11)
    lengths = (37, 90, 161, 64, 120, 200, 75)
    prompts = [torch.randint(3, 384, (n,), generator=gen).tolist() for n in lengths]
    policies = [*POLICY_NAMES, "quest", "infllm"]
    options = [
        options_for(policy, dense_layers=index % 2, max_new=20 + 3 * index)
        for index, policy in enumerate(policies)
    ]
    run(request.getfixturevalue(model), options, prompts)
    assert check.layers_checked > 50 and check.rows_checked > 0


def test_one_selecting_group_is_the_whole_step(tiny_gqa2_dir, monkeypatch):
    """Only Quest rows over budget: the group is every row (``all_rows``, no row index)."""
    check = SelectionCheck(monkeypatch)
    gen = torch.Generator().manual_seed(12)
    prompts = [torch.randint(3, 384, (n,), generator=gen).tolist() for n in (150, 170)]
    run(tiny_gqa2_dir, [options_for("quest", 1, 16)] * 2, prompts)
    assert check.layers_checked > 0
