"""The whole engine on FlashInfer against the reference backend, and CUDA-graph replay against eager.

Backends are compared teacher-forced: the reference engine is fed the tokens the FlashInfer
engine chose, so one bf16 near-tie cannot send the two runs down different paths, and every
step's logits are compared (cosine similarity >= 0.999 per row: same distribution up to bf16
noise; greedy choices agree on >= 95% of steps). Quest and InfLLM choose pages by top-k in every
layer: bf16 noise in the layers below can flip a near-tied page (measured on an H100: one row of
one step at cosine 0.979), so for them the cosine bound holds for >= 90% of rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.options import POLICY_NAMES, RequestOptions, SparseOptions, StoppingOptions

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")

PROMPT_LENGTHS = (37, 90, 161)


class RecordingSampler:
    """Wraps the engine's sampler: records every step's logits, optionally forces the tokens."""

    def __init__(self, sampler, forced: list[list[int]] | None = None) -> None:
        self.sampler = sampler
        self.forced = forced
        self.logits: list[torch.Tensor] = []

    def sample(self, logits, params, positions):
        token_ids, logprobs = self.sampler.sample(logits, params, positions)
        self.logits.append(logits.float().clone())
        if self.forced is not None:
            token_ids = torch.tensor(self.forced[len(self.logits) - 1], device=token_ids.device)
        return token_ids, logprobs


def make_engine(model_dir: Path, backend: str, cuda_graphs: bool = False) -> LLMEngine:
    return LLMEngine.from_config(
        EngineConfig(
            model=str(model_dir),
            device="cuda",
            dtype="bfloat16",
            backend=backend,
            kv_cache_tokens=4096,
            max_batch_size=4,
            guardian_workers=0,
            cuda_graphs=cuda_graphs,
        )
    )


def requests(policy: str, max_new: int = 24) -> tuple[list[list[int]], list[RequestOptions]]:
    gen = torch.Generator().manual_seed(len(policy))
    prompts = [torch.randint(3, 384, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    options = RequestOptions(
        stopping=StoppingOptions(max_new_tokens=max_new, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=48, sink_tokens=16, dense_layers=1),
    )
    return prompts, [options] * len(prompts)


def run_recorded(engine: LLMEngine, policy: str, forced: list[list[int]] | None = None):
    recorder = RecordingSampler(engine.sampler, forced)
    engine.sampler = recorder  # type: ignore[assignment]
    reports = engine.generate(*requests(policy))
    engine.close()
    return recorder, reports


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("model", ["tiny_gqa2_dir", "tiny_gqa8_dir"])
def test_engine_logits_match_reference_backend(policy, model, request):
    model_dir = request.getfixturevalue(model)
    flash, flash_reports = run_recorded(make_engine(model_dir, "flashinfer"), policy)
    chosen = [logits.argmax(dim=-1).tolist() for logits in flash.logits]
    reference, _ = run_recorded(make_engine(model_dir, "reference"), policy, forced=chosen)
    assert len(reference.logits) == len(flash.logits)
    agree = close = total = 0
    for ours, theirs in zip(flash.logits, reference.logits, strict=True):
        assert ours.shape == theirs.shape
        cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
        close += int((cosine >= 0.999).sum())
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        total += ours.shape[0]
    selects_per_layer = policy in ("quest", "infllm")
    assert close >= (0.9 if selects_per_layer else 1.0) * total
    assert agree >= 0.95 * total
    if policy != "full":  # the budget bit: the longest request (12 pages held) attended fewer
        assert flash_reports[-1].kv.attended_pages_per_step[-1] < 12


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_cuda_graph_replay_equals_eager(policy, tiny_gqa8_dir):
    eager = make_engine(tiny_gqa8_dir, "flashinfer", cuda_graphs=False)
    graphs = make_engine(tiny_gqa8_dir, "flashinfer", cuda_graphs=True)
    prompts, options = requests(policy, max_new=40)
    # Different lengths: the batch shrinks as requests finish, so several batch sizes are captured.
    options = [
        RequestOptions(stopping=StoppingOptions(max_new_tokens=n, ignore_eos=True), sparse=o.sparse)
        for n, o in zip((40, 25, 12), options, strict=True)
    ]
    eager.sampler = eager_logits = RecordingSampler(eager.sampler)  # type: ignore[assignment]
    graphs.sampler = graph_logits = RecordingSampler(graphs.sampler)  # type: ignore[assignment]
    expected = eager.generate(prompts, options)
    got = graphs.generate(prompts, options)
    runner_graphs = graphs.runner.graphs
    assert runner_graphs is not None and runner_graphs.captured and runner_graphs.replays > 0
    # Batches of 3, 2 and 1 run padded to the buckets 4, 2 and 1.
    assert {key[0] for key in runner_graphs.captured} == {1, 2, 4}
    stats = graphs.runner.graph_stats()
    decode_steps = len(graph_logits.logits) - 1  # every step but the prefill decodes
    assert stats["replays"] + stats["eager_steps"] == decode_steps
    assert stats["captures"] == stats["cached"] == len(runner_graphs.captured)
    for want, have in zip(expected, got, strict=True):
        assert have.output_token_ids == want.output_token_ids
    # Same kernels on the same planned buffers: replay is bit-identical to eager.
    assert all(torch.equal(a, b) for a, b in zip(eager_logits.logits, graph_logits.logits, strict=True))
    eager.close()
    graphs.close()


def mixed_requests(max_new: tuple[int, ...]) -> tuple[list[list[int]], list[RequestOptions]]:
    """One request per policy, prompts of different lengths, different stopping points."""
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 384, (n,), generator=gen).tolist() for n in (37, 90, 161, 64, 120)]
    options = [
        RequestOptions(
            stopping=StoppingOptions(max_new_tokens=n, ignore_eos=True),
            sparse=SparseOptions(policy=policy, budget_tokens=48, sink_tokens=16, dense_layers=1),
        )
        for policy, n in zip(POLICY_NAMES, max_new, strict=True)
    ]
    return prompts, options


def test_mixed_batch_graph_replay_equals_eager(tiny_gqa2_dir):
    """Every policy in one batch: the graph engine replays and matches eager bit for bit."""
    eager = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=False)
    graphs = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=True)
    eager.sampler = eager_logits = RecordingSampler(eager.sampler)  # type: ignore[assignment]
    graphs.sampler = graph_logits = RecordingSampler(graphs.sampler)  # type: ignore[assignment]
    # max_batch_size 4: four requests decode together, the fifth joins when one finishes.
    expected = eager.generate(*mixed_requests((40, 33, 20, 40, 28)))
    got = graphs.generate(*mixed_requests((40, 33, 20, 40, 28)))
    for want, have in zip(expected, got, strict=True):
        assert have.output_token_ids == want.output_token_ids
    assert all(torch.equal(a, b) for a, b in zip(eager_logits.logits, graph_logits.logits, strict=True))
    stats = graphs.runner.graph_stats()
    assert stats["replays"] > stats["eager_steps"] > 0
    eager.close()
    graphs.close()


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_decode_step_never_syncs(cuda_graphs, tiny_gqa2_dir):
    """The runner's decode step (page growth, eviction, selection, attention, graph replay) under
    ``torch.cuda.set_sync_debug_mode("error")``: any synchronizing torch call raises. With graphs,
    the same workload runs twice first so every shape is captured (capture itself synchronizes)."""
    engine = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=cuda_graphs)
    decode = engine.runner.decode
    checked = []

    def strict_decode(seqs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            logits = decode(seqs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        checked.append(len(seqs))
        return logits

    passes = 3 if cuda_graphs else 1
    for index in range(passes):
        if index == passes - 1:
            engine.runner.decode = strict_decode  # type: ignore[method-assign]
            captures = engine.runner.graph_stats()["captures"]
        reports = engine.generate(*mixed_requests((40, 33, 20, 40, 28)))
    assert [r.completion_tokens for r in reports] == [40, 33, 20, 40, 28]
    assert sum(checked) == 40 + 33 + 20 + 40 + 28 - 5  # every decoded token of every request
    if cuda_graphs:
        assert engine.runner.graph_stats()["captures"] == captures  # nothing new to capture
    engine.close()
