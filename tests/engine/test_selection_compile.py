"""The selection kernels at widths no warm-up request reaches (lil_sparse/engine/selection_compile.py),
on CPU: which widths, and that its selection of rows of no request is the policy's reference
selection (the Triton select through the interpreter, the scores by the CPU path). The GPU test
(tests/gpu/test_long_widths_gpu.py) checks that after the warm-up a request crossing into a wider
width builds no kernel."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine, selection_compile
from lil_sparse.engine.selection_compile import compile_selection_widths, select_at_width, width_buckets
from lil_sparse.policies import POLICIES
from lil_sparse.testing.tiny_model import build_tiny_model

# CPU tensors through Triton's interpreter, which tests/conftest.py turns on only without CUDA
# (tests/gpu/test_long_widths_gpu.py covers the GPU).
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU test: Triton's interpreter is off with CUDA"
)


@pytest.fixture(scope="module")
def long_engine(tmp_path_factory):
    """A 20,000-token context (1250 pages of 16), on CPU."""
    model = build_tiny_model(
        tmp_path_factory.mktemp("long"), architecture="llama", max_position_embeddings=20000
    )
    engine = LLMEngine.from_config(
        EngineConfig(model=str(model), kv_cache_tokens=2048, max_batch_size=2, guardian_workers=0)
    )
    yield engine
    engine.close()


def test_width_buckets_are_every_width_the_runner_uses(long_engine):
    runner = long_engine.runner
    assert runner.pages.table.max_pages_per_seq == 1250
    # powers of two to 256 pages, then steps of 256, the last capped at the table
    assert width_buckets(runner) == [8, 16, 32, 64, 128, 256, 512, 768, 1024, 1250]
    assert {runner.width_bucket(held) for held in range(1, 1251)} == set(width_buckets(runner))


def test_nothing_runs_where_the_fused_selection_does_not(long_engine):
    assert compile_selection_widths(long_engine.runner, 2, [512]) == 0  # CPU tensors


@pytest.mark.parametrize("policy", [name for name, p in POLICIES.items() if p.selects_per_layer])
@pytest.mark.parametrize("step_index", [0, 1])
@pytest.mark.parametrize("captured", [False, True])
def test_rows_of_no_request_select_as_the_reference(long_engine, policy, step_index, captured):
    """Slot 0's page ids and the last layer's key metadata made random: the page list the
    fused select wrote for each row holds the reference's pages (`select_slots`), newest last."""
    runner, width = long_engine.runner, 512
    kv, heads = runner.kv, runner.num_kv_heads
    gen = torch.Generator().manual_seed(step_index)
    pages = torch.randint(0, kv.num_pages, (heads, width), generator=gen, dtype=torch.int32)
    runner.pages.table.table[0, :, :width] = pages
    layer = runner.num_layers - 1
    kv.key_bounds[layer] = torch.randn(kv.key_bounds[layer].shape, generator=gen).sort(dim=1).values
    kv.key_mean[layer] = torch.randn(kv.key_mean[layer].shape, generator=gen)
    queries = torch.randn(heads, 2, kv.head_dim, generator=gen)
    batch, indptr, indices = select_at_width(runner, POLICIES[policy], width, step_index, queries, captured)
    assert (batch.held.stride(0) == 1) is captured  # a graph's copy is contiguous
    older = POLICIES[policy].select_slots(layer, queries, batch, kv)[:, : width // 2 - 1]
    for head in range(heads):
        start = int(indptr[step_index * heads + head])
        written = indices[start : start + width // 2]
        assert int(written[-1]) == int(pages[head, width - 1])  # the newest page last
        want = pages[head, older[head]]
        assert sorted(written[:-1].tolist()) == sorted(want.tolist())
    assert (indices >= 0).sum() == heads * (width // 2)  # only the step's own rows written


def test_compile_counts_each_policy_alone_and_beside_another_eager_and_captured(long_engine, monkeypatch):
    monkeypatch.setattr(selection_compile, "fused_selection_enabled", lambda *_args: True)
    selecting = sum(policy.selects_per_layer for policy in POLICIES.values())
    assert compile_selection_widths(long_engine.runner, 2, [512, 768]) == 2 * 2 * 2 * selecting
