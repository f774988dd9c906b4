"""A decode step's policy groups: the rows whose policy selects pages or observes attention.

Built once per step by :class:`~lil_sparse.engine.model_runner.ModelRunner` (at most one group
per policy, in registry order), read by every layer through
:class:`~lil_sparse.engine.step_attention.DecodeAttention`.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from lil_sparse.engine.decode_layouts import DecodeLayouts, dense_until
from lil_sparse.engine.page_manager import PageManager
from lil_sparse.engine.sequence import Sequence
from lil_sparse.engine.step_attention import PolicyGroup
from lil_sparse.policies import POLICIES, get_policy


def build_policy_groups(
    seqs: list[Sequence],
    selecting: list[bool],
    last_page_len: torch.Tensor,
    width: int,
    step_rows: int,
    pages: PageManager,
    layouts: DecodeLayouts,
) -> list[PolicyGroup]:
    """Groups of rows whose policy selects or observes. ``selecting``: the selection gate's
    decision per sequence (:meth:`~lil_sparse.engine.selection_gate.SelectionGate.selecting`);
    ``step_rows``: sequences in the step, padding included. A selecting policy's request that
    does not select this step (it holds no more pages than its budget, or its group's selection
    cannot pay) stays out of the group and attends its base pages (the dense path: same pages in
    order, no selection work), so a step pays for selection only on rows that select and skips a
    group with none (a group that is not built keeps no graph key of its own)."""
    heads, page_size = pages.num_kv_heads, pages.page_size
    members: dict[str, list[int]] = {}
    for index, seq in enumerate(seqs):
        if get_policy(seq.policy).observes_attention or selecting[index]:
            members.setdefault(seq.policy, []).append(index)
    groups = []
    for name in POLICIES:  # registry order: a stable group order keeps graph keys stable
        if name not in members:
            continue
        policy = POLICIES[name]
        group_index = members[name]
        member_seqs = [seqs[i] for i in group_index]
        all_rows = len(group_index) == step_rows
        batch, _ = pages.policy_batch(member_seqs, None, width, step_index=group_index)
        layout = None
        if policy.observes_attention:  # only H2O packs its own rows' attention
            counts = [
                policy.attended_pages(s.held_pages, s.budget_pages) for s in member_seqs for _ in range(heads)
            ]
            rows_last = last_page_len if all_rows else last_page_len[batch.rows]  # device index
            host_last = tuple(s.next_position % page_size + 1 for s in member_seqs for _ in range(heads))
            layout = layouts.layout(counts, rows_last, host_last, 0)
        # A fixed top-k size (the largest budget, not the largest current selection) keeps
        # selection shapes static while sequences grow into their budget; rows that select
        # fewer pages ignore the extra candidates.
        max_select = min(max(s.budget_pages for s in member_seqs), width)
        uniform = all(min(s.held_pages, s.budget_pages) == max_select for s in member_seqs)
        batch = replace(batch, layout=layout, max_select=max_select, uniform_select=uniform)
        dense = [dense_until(s) for s in member_seqs]
        sole = len(group_index) == len(seqs)  # every sequence of the step (padding aside)
        groups.append(PolicyGroup(policy, batch, min(dense), max(dense), all_rows=all_rows, sole=sole))
    return groups
