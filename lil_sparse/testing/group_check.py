"""Check a runner's kept policy-group tensors against fresh ones at every step, and the workload
that exercises them (CPU and GPU tests of :class:`~lil_sparse.engine.policy_groups.GroupTensors`)."""

from __future__ import annotations

import torch

from lil_sparse.engine.cuda_graphs import GROUP_TENSOR_FIELDS
from lil_sparse.engine.model_runner import ModelRunner
from lil_sparse.engine.policy_groups import build_policy_groups
from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions

# Seven requests through four slots: three start once others finish and take their slots; the
# last, 150 tokens long, widens the step's tables under groups whose rows stay.
PROMPT_LENGTHS = (40, 75, 21, 58, 33, 90, 150)
NEW_TOKENS = (40, 24, 60, 18, 35, 20, 12)
POLICIES = ("h2o", "quest", "infllm", "h2o", "quest", "h2o", "full")


def group_workload(max_token: int) -> tuple[list[list[int]], list[RequestOptions]]:
    """Prompts (token ids in ``[3, max_token)``, seeded) and options of that workload: budget 32
    tokens, sink 16, one dense layer, ``NEW_TOKENS`` each, EOS ignored."""
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, max_token, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    options = [
        RequestOptions(
            stopping=StoppingOptions(max_new_tokens=n, ignore_eos=True),
            sparse=SparseOptions(policy=policy, budget_tokens=32, sink_tokens=16, dense_layers=1),
        )
        for policy, n in zip(POLICIES, NEW_TOKENS, strict=True)
    ]
    return prompts, options


def check_kept_groups(runner: ModelRunner) -> list[str]:
    """Wrap ``runner._policy_groups`` so that every step also builds its groups anew (no kept
    tensors) and compares: the returned list collects a ``"policy.field"`` entry for each tensor,
    or host field, of a kept group that differs from the fresh one (empty: none did), and one
    ``"checked"`` entry per group compared. Syncs with the device at every step (a test's
    price)."""
    build = runner._policy_groups
    found: list[str] = []

    def checking(seqs, selecting, last_page_len, width, step_rows):
        groups = build(seqs, selecting, last_page_len, width, step_rows)
        fresh = build_policy_groups(
            seqs, selecting, last_page_len, width, step_rows, runner.pages, runner.layouts
        )
        if [g.policy.name for g in groups] != [g.policy.name for g in fresh]:
            found.append("group order")
        for have, want in zip(groups, fresh, strict=True):
            name = have.policy.name
            pairs = [(getattr(have.batch, f), getattr(want.batch, f), f) for f in GROUP_TENSOR_FIELDS]
            pairs += [(have.newest, want.newest, "newest"), (have.newest_at, want.newest_at, "newest_at")]
            found.extend(f"{name}.{field}" for a, b, field in pairs if not torch.equal(a, b))
            shape = (have.batch.max_select, have.batch.uniform_select)
            if shape != (want.batch.max_select, want.batch.uniform_select):
                found.append(f"{name}.max_select")
            found.append("checked")
        return groups

    runner._policy_groups = checking  # type: ignore[method-assign]
    return found
