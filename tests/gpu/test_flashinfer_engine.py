"""The whole engine on FlashInfer against the reference backend, and CUDA-graph replay against eager.

Backends are compared teacher-forced: the reference engine is fed the tokens the FlashInfer
engine chose, so one bf16 near-tie cannot send the two runs down different paths, and every
step's logits are compared (cosine similarity >= 0.999 per row: same distribution up to bf16
noise; greedy choices agree on >= 95% of steps, counting as agreeing a pick the reference scores
within one bf16 ulp of its best: random tiny models have near-uniform logits, and such ties
flipped 2-4 of 72 steps with either FlashInfer or the Triton decode, H200, 2026-11-30).
Quest and InfLLM choose pages by top-k in every layer: bf16 noise in the layers below can flip a
near-tied page (measured on an H100: one row of one step at cosine 0.979), so for them the cosine
bound holds for >= 90% of rows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from gpu_engine import gpu_engine

from lil_sparse.engine import LLMEngine, cuda_graphs
from lil_sparse.engine.step_attention import DecodeAttention
from lil_sparse.kernels import rotary_append
from lil_sparse.options import (
    POLICY_NAMES,
    RequestOptions,
    SamplingOptions,
    SparseOptions,
    StoppingOptions,
)
from lil_sparse.sampling import host_record

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")

PROMPT_LENGTHS = (37, 90, 161)


class RecordingSampler:
    """Wraps the engine's sampler: records every step's logits, optionally forces the tokens.

    Installed as ``engine.step_sampler.sampler``, the sampler each step draws through; tests
    check that it saw every sampled row, so a recorder the step bypasses cannot pass vacuously.
    """

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

    def sample_record(self, logits, params, positions, host=None):
        """The engine's entry (``Sampler.sample_record``), through :meth:`sample` (the record on
        the device: the step copies it to ``host``)."""
        token_ids, logprobs = self.sample(logits, params, positions)
        return token_ids, host_record(token_ids, logprobs)


def make_engine(model_dir: Path, backend: str, cuda_graphs: bool = False) -> LLMEngine:
    return gpu_engine(model_dir, backend=backend, cuda_graphs=cuda_graphs)


def requests(policy: str, max_new: int = 24) -> tuple[list[list[int]], list[RequestOptions]]:
    gen = torch.Generator().manual_seed(len(policy))
    prompts = [torch.randint(3, 384, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    options = RequestOptions(
        stopping=StoppingOptions(max_new_tokens=max_new, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=48, sink_tokens=16, dense_layers=1),
    )
    return prompts, [options] * len(prompts)


def shrinking_requests(policy: str) -> tuple[list[list[int]], list[RequestOptions]]:
    """:func:`requests` with 40, 25 and 12 new tokens: the batch shrinks as requests finish, so
    several batch sizes are captured."""
    prompts, options = requests(policy, max_new=40)
    return prompts, [
        RequestOptions(stopping=StoppingOptions(max_new_tokens=n, ignore_eos=True), sparse=o.sparse)
        for n, o in zip((40, 25, 12), options, strict=True)
    ]


def record(engine: LLMEngine, forced: list[list[int]] | None = None) -> RecordingSampler:
    recorder = RecordingSampler(engine.step_sampler.sampler, forced)
    engine.step_sampler.sampler = recorder  # type: ignore[assignment]
    return recorder


def recorded_rows(recorder: RecordingSampler) -> int:
    return sum(logits.shape[0] for logits in recorder.logits)


def same_greedy_choice(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """Per row: both logits pick the same token, or the reference scores our pick within one bf16
    ulp of its own best (a tie at the logits' precision: ``2^-7`` of the top logit's magnitude,
    the widest bf16 spacing relative to a value).
    ``ours, theirs: [rows, vocab] float32`` -> ``[rows] bool``."""
    ours_pick = ours.argmax(-1, keepdim=True)
    best = theirs.max(-1, keepdim=True).values
    tie = theirs.gather(-1, ours_pick) >= best - best.abs() * 2**-7
    return (ours_pick == theirs.argmax(-1, keepdim=True)).squeeze(-1) | tie.squeeze(-1)


def run_recorded(engine: LLMEngine, policy: str, forced: list[list[int]] | None = None):
    recorder = record(engine, forced)
    reports = engine.generate(*requests(policy))
    engine.close()
    assert recorded_rows(recorder) == sum(r.completion_tokens for r in reports)  # one row per token
    return recorder, reports


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("model", ["tiny_gqa2_dir", "tiny_gqa8_dir"])
def test_engine_logits_match_reference_backend(policy, model, request):
    model_dir = request.getfixturevalue(model)
    flash, flash_reports = run_recorded(make_engine(model_dir, "flashinfer"), policy)
    chosen = [logits.argmax(dim=-1).tolist() for logits in flash.logits]
    reference, _ = run_recorded(make_engine(model_dir, "reference"), policy, forced=chosen)
    assert len(reference.logits) == len(flash.logits) > 0
    assert recorded_rows(flash) == len(PROMPT_LENGTHS) * 24
    agree = close = total = 0
    for ours, theirs in zip(flash.logits, reference.logits, strict=True):
        assert ours.shape == theirs.shape
        cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
        close += int((cosine >= 0.999).sum())
        agree += int(same_greedy_choice(ours, theirs).sum())
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
    prompts, options = shrinking_requests(policy)
    eager_logits, graph_logits = record(eager), record(graphs)
    expected = eager.generate(prompts, options)
    got = graphs.generate(prompts, options)
    assert recorded_rows(eager_logits) == recorded_rows(graph_logits) == 40 + 25 + 12
    runner_graphs = graphs.runner.graphs
    assert runner_graphs is not None and runner_graphs.captured and runner_graphs.replays > 0
    # Batches of 3, 2 and 1 run padded to the buckets 4, 2 and 1.
    assert {key[0] for key in runner_graphs.captured} == {1, 2, 4}
    stats = graphs.runner.graph_stats()
    # Overlap scheduling (on by default on CUDA): every sampling step, the prefill's included,
    # launched the next decode ahead (the last one's rows dropped), and nothing else decoded.
    sampling_steps = len(graph_logits.logits)
    assert graphs.overlap_stats()["ahead_steps"] == sampling_steps
    assert stats["replays"] + stats["eager_steps"] == sampling_steps
    assert stats["captures"] == stats["cached"] == len(runner_graphs.captured)
    for want, have in zip(expected, got, strict=True):
        assert have.output_token_ids == want.output_token_ids
    # Same kernels on the same planned buffers: replay is bit-identical to eager.
    assert all(torch.equal(a, b) for a, b in zip(eager_logits.logits, graph_logits.logits, strict=True))
    # Each graph reads its shape's input set in place (written by the inputs kernel, no copies).
    for key, captured in runner_graphs.captured.items():
        assert captured.step.input_ids is runner_graphs.inputs[key[:2]][0]
        assert captured.step.base_page_ids is runner_graphs.inputs[key[:2]][3]
    eager.close()
    graphs.close()


def test_input_sets_leave_with_their_graphs(tiny_gqa8_dir, monkeypatch):
    """With room for one (batch, width) input set, each new step shape drops the set before it
    and the graphs that read it; replay still equals eager bit for bit."""
    monkeypatch.setattr(cuda_graphs, "MAX_INPUT_SETS", 1)
    eager = make_engine(tiny_gqa8_dir, "flashinfer", cuda_graphs=False)
    graphs = make_engine(tiny_gqa8_dir, "flashinfer", cuda_graphs=True)
    prompts, options = shrinking_requests("quest")
    eager_logits, graph_logits = record(eager), record(graphs)
    expected = eager.generate(prompts, options)
    got = graphs.generate(prompts, options)
    runner_graphs = graphs.runner.graphs
    assert runner_graphs is not None and runner_graphs.replays > 0
    assert len(runner_graphs.inputs) == 1
    assert all(key[:2] in runner_graphs.inputs for key in runner_graphs.captured)
    assert graphs.runner.graph_stats()["evictions"] > 0  # batches 4, 2, 1: three shapes at least
    for want, have in zip(expected, got, strict=True):
        assert have.output_token_ids == want.output_token_ids
    assert all(torch.equal(a, b) for a, b in zip(eager_logits.logits, graph_logits.logits, strict=True))
    eager.close()
    graphs.close()


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_rotary_append_step_equals_rotary_then_write(policy, tiny_gqa8_dir, monkeypatch):
    # The fused model hands the decode step pre-RoPE keys (RotatingAttentionFn): the step's one
    # RoPE + K/V append kernel must give what RoPE then the K/V write give, bit for bit.
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return fused_kernel(*args, **kwargs)

    fused_kernel = rotary_append.rotary_append_decode_kv
    monkeypatch.setattr(rotary_append, "rotary_append_decode_kv", counted)
    fused, fused_reports = run_recorded(make_engine(tiny_gqa8_dir, "flashinfer"), policy)
    assert calls  # the decode steps took the one-kernel path
    # Without rotate_and_attend the fused model rotates q and k itself and calls the step.
    monkeypatch.delattr(DecodeAttention, "rotate_and_attend")
    calls.clear()
    apart, apart_reports = run_recorded(make_engine(tiny_gqa8_dir, "flashinfer"), policy)
    assert not calls
    assert [r.output_token_ids for r in fused_reports] == [r.output_token_ids for r in apart_reports]
    assert len(fused.logits) == len(apart.logits) > 0
    assert all(torch.equal(a, b) for a, b in zip(fused.logits, apart.logits, strict=True))


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
    eager_logits, graph_logits = record(eager), record(graphs)
    # max_batch_size 4: four requests decode together, the fifth joins when one finishes.
    expected = eager.generate(*mixed_requests((40, 33, 20, 40, 28)))
    got = graphs.generate(*mixed_requests((40, 33, 20, 40, 28)))
    assert recorded_rows(eager_logits) == recorded_rows(graph_logits) == 40 + 33 + 20 + 40 + 28
    for want, have in zip(expected, got, strict=True):
        assert have.output_token_ids == want.output_token_ids
    assert all(torch.equal(a, b) for a, b in zip(eager_logits.logits, graph_logits.logits, strict=True))
    stats = graphs.runner.graph_stats()
    assert stats["replays"] > stats["eager_steps"] > 0
    eager.close()
    graphs.close()


def test_steps_flip_between_triton_and_flashinfer_decode_under_graphs(tiny_gqa2_dir, monkeypatch):
    """A slot runs the Triton decode or FlashInfer's as its page counts say, and the choice is part
    of the graph key (:meth:`FlashInferBackend.step_key`: minus the Triton decode's pages per loop
    step, or a split point). Forced here to flip with the widest row's page count (Triton on even
    counts only), steps of both kinds are captured and replayed in one run, and replay still
    equals eager bit for bit."""
    from lil_sparse.kernels import fast_decode

    rule = fast_decode.runs_triton
    monkeypatch.setattr(
        fast_decode,
        "runs_triton",
        lambda pages, total, rows, tiles: pages % 2 == 0 and rule(pages, total, rows, tiles),
    )
    eager = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=False)
    graphs = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=True)
    eager_logits, graph_logits = record(eager), record(graphs)
    expected = eager.generate(*mixed_requests((40, 33, 20, 40, 28)))
    got = graphs.generate(*mixed_requests((40, 33, 20, 40, 28)))
    backend = graphs.runner.backend
    if not any(slot.fast is not None for slot in backend._slots.values()):
        pytest.skip(f"{backend.num_sms} SMs: no slot of this run gets the Triton decode")
    runner_graphs = graphs.runner.graphs
    assert runner_graphs is not None and runner_graphs.replays > 0
    kinds = {"triton" if split < 0 else "flashinfer" for key in runner_graphs.captured for split in key[-1]}
    assert kinds == {"triton", "flashinfer"}
    for want, have in zip(expected, got, strict=True):
        assert have.output_token_ids == want.output_token_ids
    assert all(torch.equal(a, b) for a, b in zip(eager_logits.logits, graph_logits.logits, strict=True))
    eager.close()
    graphs.close()


def no_sync_requests() -> tuple[list[list[int]], list[RequestOptions]]:
    """:func:`mixed_requests` with two sampled rows (top-k, top-p: the filters and the noise)."""
    prompts, options = mixed_requests((40, 33, 20, 40, 28))
    sampled = {
        1: SamplingOptions(temperature=0.8, top_k=20, seed=1),
        3: SamplingOptions(temperature=1.0, top_p=0.9, seed=2),
    }
    options = [replace(o, sampling=sampled.get(i, o.sampling)) for i, o in enumerate(options)]
    return prompts, options


class StrictSteps:
    """Runs every ``engine.step()`` under ``torch.cuda.set_sync_debug_mode("error")``: any
    synchronizing torch call raises. Sanctioned, in ``default`` mode: the step's one transfer
    (``StepSampler.wait``: the sampled tokens and logprobs), counted per step; and prompt
    chunks (``runner.prefill`` and ``runner.record_chunk``: the prefill path, whose eviction
    after a prompt copies the freed page ids to the host once per request)."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.fetches_per_step: list[int] = []
        self.sampling_steps = 0
        self.fetched_rows = 0
        self._step = engine.step
        wait = engine.step_sampler.wait

        def counted_wait(inflight):
            self.fetches_per_step[-1] += 1
            tokens, values = self.allowed(wait)(inflight)
            self.fetched_rows += len(tokens)
            return tokens, values

        engine.step = self.step  # type: ignore[method-assign]
        engine.step_sampler.wait = counted_wait  # type: ignore[method-assign]
        engine.runner.prefill = self.allowed(engine.runner.prefill)  # type: ignore[method-assign]
        engine.runner.record_chunk = self.allowed(engine.runner.record_chunk)  # type: ignore[method-assign]

    @staticmethod
    def allowed(function):
        def call(*args):
            torch.cuda.set_sync_debug_mode("default")
            try:
                return function(*args)
            finally:
                torch.cuda.set_sync_debug_mode("error")

        return call

    def step(self):
        self.fetches_per_step.append(0)
        torch.cuda.set_sync_debug_mode("error")
        try:
            events = self._step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        self.sampling_steps += any(event.token_ids for event in events)
        return events


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_engine_step_syncs_once_to_fetch_the_tokens(cuda_graphs, tiny_gqa2_dir):
    """The whole ``LLMEngine.step()`` (scheduling, admission, page growth, eviction, selection,
    attention, graph replay, sampling with filters and noise, detokenizer, stop checks, release
    of finished requests) makes exactly one device-to-host transfer per step that samples: the
    tokens with their logprobs. With graphs, the same workload runs twice first so every shape is
    captured (capture itself synchronizes)."""
    engine = make_engine(tiny_gqa2_dir, "flashinfer", cuda_graphs=cuda_graphs)
    passes = 3 if cuda_graphs else 1
    for index in range(passes):
        if index == passes - 1:
            strict = StrictSteps(engine)
            captures = engine.runner.graph_stats()["captures"]
        reports = engine.generate(*no_sync_requests())
    assert [r.completion_tokens for r in reports] == [40, 33, 20, 40, 28]
    assert strict.fetched_rows == 40 + 33 + 20 + 40 + 28  # every token of every request
    assert max(strict.fetches_per_step) == 1
    assert sum(strict.fetches_per_step) == strict.sampling_steps > 0
    assert engine.pool.num_used == 0
    if cuda_graphs:
        assert engine.runner.graph_stats()["captures"] == captures  # nothing new to capture
    engine.close()
