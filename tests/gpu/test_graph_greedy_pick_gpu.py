"""The greedy pick made inside a decode step's CUDA graph (:mod:`lil_sparse.engine.cuda_graphs`).

For every policy, each graph step's argmax, its log-probability and its host record must be
those of the logits the step returns (``torch.argmax`` exactly, ties included; ``log_softmax``
within float32 rounding); the engine must send that record to the host for its all-greedy steps;
and its tokens and logprobs, greedy or sampled, must be those of the engine without graphs,
which computes the pick outside any graph.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gpu_engine import gpu_engine

from lil_sparse.options import POLICY_NAMES, RequestOptions, SamplingOptions, SparseOptions, StoppingOptions
from lil_sparse.sampling import StepLogits

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("flashinfer")

PROMPT_LENGTHS = (90, 90, 90)  # equal rows keep their order (no reorder drops the pick); padded to 4
MAX_NEW = 30
SAMPLED = SamplingOptions(temperature=0.8, top_p=0.9, seed=7)


def pick_problems(out: StepLogits) -> list[str]:
    """What is wrong with ``out``'s argmax against its logits (empty: nothing). Checked when the
    decode call returns: a graph's buffers are overwritten by its next replay."""
    argmax = out.argmax
    if argmax is None or argmax.own is None or argmax.pairs is None:
        return ["no pick"]
    values = out.values.float()
    tokens = values.argmax(dim=-1)
    own = values.log_softmax(dim=-1).gather(-1, tokens.unsqueeze(1)).squeeze(1)
    problems = []
    if not torch.equal(argmax.tokens, tokens):
        problems.append(f"tokens {argmax.tokens.tolist()} != {tokens.tolist()}")
    if not torch.allclose(argmax.own, own, rtol=1e-5, atol=1e-5):
        problems.append(f"own {argmax.own.tolist()} != {own.tolist()}")
    if not torch.equal(argmax.pairs, torch.stack((argmax.tokens.double(), argmax.own.double()), dim=1)):
        problems.append("pairs are not (tokens, own)")
    return problems


def run(model_dir: Path, policy: str, cuda_graphs: bool, sampling: SamplingOptions):
    """The reports, the problems of every decode call's pick, how many calls had one, and how
    many steps sent the graph's host record itself to the host."""
    engine = gpu_engine(model_dir, cuda_graphs=cuda_graphs)
    problems: list[str] = []
    picks = [0]
    records = [0]
    decode, host_record = engine.runner.decode, engine.step_sampler.host_record

    def recording_decode(seqs, **kwargs):
        out = decode(seqs, **kwargs)
        if out.argmax is not None:
            picks[0] += 1
            problems.extend(pick_problems(out))
        return out

    def recording_host_record(argmax, token_ids, logprobs):
        record = host_record(argmax, token_ids, logprobs)
        records[0] += argmax is not None and record is argmax.pairs
        return record

    engine.runner.decode = recording_decode  # type: ignore[method-assign]
    engine.step_sampler.host_record = recording_host_record  # type: ignore[method-assign]
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 384, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    options = RequestOptions(
        sampling=sampling,
        stopping=StoppingOptions(max_new_tokens=MAX_NEW, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=48, sink_tokens=16, dense_layers=1),
    )
    reports = engine.generate(prompts, [options] * len(prompts))
    replays = engine.runner.graph_stats()["replays"]
    engine.close()
    return reports, problems, picks[0], records[0], replays


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_the_graphs_pick_is_the_logits_argmax_and_changes_no_token(tiny_gqa2_dir, policy, sampled):
    sampling = SAMPLED if sampled else SamplingOptions()
    eager_reports, _, eager_picks, _, _ = run(tiny_gqa2_dir, policy, False, sampling)
    reports, problems, picks, records, replays = run(tiny_gqa2_dir, policy, True, sampling)
    assert eager_picks == 0  # no graph runner, no pick made with the logits
    assert replays > 0 and picks >= replays  # every graph step (eager first sights too) made one
    assert problems == []
    # Every decode step's record went to the host as the graph made it when greedy, never when
    # sampled (the prefill steps' logits come without a pick).
    assert records == (picks if not sampled else 0)
    for want, have in zip(eager_reports, reports, strict=True):
        assert have.output_token_ids == want.output_token_ids
        assert have.logprobs == want.logprobs
