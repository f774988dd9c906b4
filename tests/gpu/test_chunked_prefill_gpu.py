"""Chunked prefill on CUDA: the chunk attention in bf16, and the FlashInfer engine chunked against
unchunked (first-token logits; later chunks on FlashInfer's paged prefill, counted by its plans)
and with CUDA graphs against eager (decode rows between chunks).

The paged chunk kernel itself against the PyTorch chunk path: ``test_flashinfer_chunk_prefill.py``.

Tolerances as in conftest.py (bf16 inputs, fp32 accumulation); logits compare by cosine >= 0.999.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gpu_engine import gpu_engine

from lil_sparse.attention.chunked_prefill import chunk_attention
from lil_sparse.engine import LLMEngine
from lil_sparse.options import POLICY_NAMES, RequestOptions, SparseOptions, StoppingOptions
from lil_sparse.sampling import host_record

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")

PROMPT_LENGTHS = (37, 90, 161)


class RecordingSampler:
    """Wraps the engine's sampler and records every step's logits."""

    def __init__(self, sampler) -> None:
        self.sampler = sampler
        self.logits: list[torch.Tensor] = []

    def sample(self, logits, params, positions):
        self.logits.append(logits.float().clone())
        return self.sampler.sample(logits, params, positions)

    def sample_record(self, logits, params, positions, host=None):
        """The engine's entry (``Sampler.sample_record``), through :meth:`sample` (the record on
        the device: the step copies it to ``host``)."""
        token_ids, logprobs = self.sample(logits, params, positions)
        return token_ids, host_record(token_ids, logprobs)


def make_engine(model_dir: Path, budget: int, cuda_graphs: bool = False) -> LLMEngine:
    return gpu_engine(
        model_dir,
        cuda_graphs=cuda_graphs,
        chunked_prefill=budget > 0,
        max_num_batched_tokens=budget,
        poison_freed_pages=True,
    )


def options(policy: str, max_new: int) -> RequestOptions:
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=max_new, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=48, sink_tokens=16, dense_layers=1),
    )


def prompts(seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 384, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]


@pytest.mark.parametrize("length,chunk", [(64, 16), (161, 48), (300, 128)])
def test_chunk_attention_bf16_matches_fp32_causal(length: int, chunk: int) -> None:
    torch.manual_seed(0)
    q = torch.randn(length, 8, 64, device="cuda")
    k = torch.randn(length, 2, 64, device="cuda")
    v = torch.randn(length, 2, 64, device="cuda")
    expected = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.transpose(0, 1).repeat_interleave(4, 0),
        v.transpose(0, 1).repeat_interleave(4, 0),
        is_causal=True,
    ).transpose(0, 1)
    for start in range(0, length, chunk):
        end = min(length, start + chunk)
        got = chunk_attention(q[start:end].bfloat16(), k[:end].bfloat16(), v[:end].bfloat16()).float()
        assert (got - expected[start:end]).abs().max() <= 3e-2
        assert (got - expected[start:end]).norm() / expected[start:end].norm() <= 1e-2


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("model", ["tiny_gqa2_dir", "tiny_gqa8_dir"])
def test_chunked_first_token_logits_match_unchunked(policy, model, request):
    model_dir = request.getfixturevalue(model)
    first_logits = {}
    # 16: chunks end on page boundaries; 24: mid-page. Every prompt takes several chunks.
    for budget in (0, 16, 24):
        engine = make_engine(model_dir, budget)
        # The step samples through engine.step_sampler (its per-row isolation wraps the sampler).
        recorder = RecordingSampler(engine.step_sampler.sampler)
        engine.step_sampler.sampler = recorder  # type: ignore[assignment]
        for prompt in prompts(len(policy)):
            engine.generate([prompt], [options(policy, 1)])
        assert engine.stats().kv_pages_used == 0
        if budget:  # every later chunk ran FlashInfer's paged prefill, one plan per step
            continuing_steps = sum(-(-length // budget) - 1 for length in PROMPT_LENGTHS)
            assert engine.runner.backend.chunk_prefill().plans == continuing_steps
        first_logits[budget] = torch.cat(recorder.logits)
        engine.close()
    for budget in (16, 24):
        cosine = F.cosine_similarity(first_logits[budget], first_logits[0], dim=-1)
        assert cosine.shape == (len(PROMPT_LENGTHS),)
        assert bool((cosine >= 0.999).all())


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_graph_replay_between_chunks_equals_eager(policy, tiny_gqa8_dir):
    # Budget 32: the first request decodes (graph replay) while the others prefill in chunks.
    reports = {}
    recorders = {}
    for graphs in (False, True):
        engine = make_engine(tiny_gqa8_dir, 32, cuda_graphs=graphs)
        recorders[graphs] = RecordingSampler(engine.step_sampler.sampler)
        engine.step_sampler.sampler = recorders[graphs]  # type: ignore[assignment]
        reports[graphs] = engine.generate(prompts(7), [options(policy, n) for n in (40, 25, 12)])
        if graphs:
            assert engine.runner.graphs is not None and engine.runner.graphs.replays > 0
        engine.close()
    for eager, replayed in zip(reports[False], reports[True], strict=True):
        assert replayed.output_token_ids == eager.output_token_ids
    assert recorders[False].logits and len(recorders[False].logits) == len(recorders[True].logits)
    for recorder in recorders.values():  # the recorder saw every sampled row
        assert sum(logits.shape[0] for logits in recorder.logits) == 40 + 25 + 12
    for eager, replayed in zip(recorders[False].logits, recorders[True].logits, strict=True):
        assert bool((F.cosine_similarity(replayed, eager, dim=-1) >= 0.9999).all())
