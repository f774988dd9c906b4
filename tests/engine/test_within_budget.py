"""A selecting policy's request that holds no more pages than its budget runs the dense path.

Quest and InfLLM would select every page of such a request, so the runner leaves it out of its
policy's selection group (speed-T6: sparse must never cost more than dense): it attends its base
pages, exactly as a ``full`` request, while a batch mate over budget selects. Checked by the
groups the runner builds and by tokens and logits equal to the same request under ``full``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions

PAGE_SIZE = 16
BUDGET_TOKENS = 64  # 4 pages


def options(policy: str, max_new: int) -> RequestOptions:
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=max_new, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=BUDGET_TOKENS, sink_tokens=16, dense_layers=1),
    )


def run(model_dir: Path, policies: tuple[str, str]):
    """A short request (20 + 30 tokens: at most 4 pages, within budget) beside a long one
    (100-token prompt: 7 pages, over budget). Returns the reports, each decode step's logits and
    the step rows of each selection group per step."""
    engine = LLMEngine.from_config(
        EngineConfig(model=str(model_dir), kv_cache_tokens=4096, max_batch_size=4, guardian_workers=0)
    )
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 300, (n,), generator=gen).tolist() for n in (20, 100)]
    logits, group_rows = [], []
    decode, make_groups = engine.runner.decode, engine.runner._policy_groups

    def recording_decode(seqs):
        out = decode(seqs)
        logits.append(out.clone())
        return out

    def recording_groups(*args):
        groups = make_groups(*args)
        group_rows.append({g.policy.name: g.batch.rows.tolist() for g in groups})
        return groups

    engine.runner.decode = recording_decode  # type: ignore[method-assign]
    engine.runner._policy_groups = recording_groups  # type: ignore[method-assign]
    reports = engine.generate(prompts, [options(policies[0], 30), options(policies[1], 20)])
    engine.close()
    return reports, logits, group_rows


@pytest.mark.parametrize("policy", ["quest", "infllm"])
def test_a_request_within_budget_attends_densely_beside_one_that_selects(tiny_model_dir, policy):
    reports, logits, group_rows = run(tiny_model_dir, (policy, policy))
    dense_reports, dense_logits, _ = run(tiny_model_dir, ("full", policy))
    # Both decode for 19 steps, then the short one alone for 10. The long request (step rows
    # 2 and 3: sequence 1 of the step, 2 KV heads) selects in every step; the short one never.
    assert group_rows == [{policy: [2, 3]}] * 19 + [{}] * 10
    assert reports[0].kv.attended_pages_per_step == dense_reports[0].kv.attended_pages_per_step
    assert reports[0].output_token_ids == dense_reports[0].output_token_ids
    assert reports[1].output_token_ids == dense_reports[1].output_token_ids
    assert len(logits) == len(dense_logits)
    for ours, dense in zip(logits, dense_logits, strict=True):
        assert torch.equal(ours[0], dense[0])  # the same kernels on the same pages


def test_a_group_whose_requests_are_all_within_budget_is_not_built(tiny_model_dir):
    """Both requests of a policy within budget (short prompts): no selection group at all."""
    engine = LLMEngine.from_config(
        EngineConfig(model=str(tiny_model_dir), kv_cache_tokens=4096, max_batch_size=4, guardian_workers=0)
    )
    built = []
    make_groups = engine.runner._policy_groups

    def recording_groups(*args):
        groups = make_groups(*args)
        built.append([g.policy.name for g in groups])
        return groups

    engine.runner._policy_groups = recording_groups  # type: ignore[method-assign]
    reports = engine.generate([[5] * 10, [7] * 20], [options("quest", 8), options("quest", 8)])
    engine.close()
    assert [r.completion_tokens for r in reports] == [8, 8]
    assert built == [[]] * 7  # seven decode steps, none with a group
