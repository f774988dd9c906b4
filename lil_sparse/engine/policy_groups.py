"""A decode step's policy groups: the rows whose policy selects pages or observes attention.

Built once per step by :class:`~lil_sparse.engine.model_runner.ModelRunner` (at most one group
per policy, in registry order), read by every layer through
:class:`~lil_sparse.engine.step_attention.DecodeAttention`.

A group's device tensors (its :class:`~lil_sparse.policies.PolicyBatch` columns, the rows' block
tables gathered from the block table, their newest pages) depend only on its rows' host values
(:class:`~lil_sparse.engine.page_manager.BatchRow`), their places in the step, the table width
and the block table's rows. :class:`GroupTensors` keeps each policy's from the step before and
hands the very same tensors back while none of those changed (the block table's per-slot
versions say whether its rows did), which is most steps: a row's held pages change once per
page of tokens. A graph replay copies an input only when it is another tensor than the one it
copied last (:class:`~lil_sparse.engine.cuda_graphs.CapturedStep`), so a kept group's columns
and newest pages cost the step no copies and no launches; H2O's layout still brings its
``last_page_len`` (a new tensor every step, one copy) and, when the group is not the whole step,
one index op. Without it H2O's group (built every step: it observes attention) was rebuilt and
copied into the graph's tensors every step (up to 11 copies).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from lil_sparse.engine.decode_layouts import DecodeLayouts, dense_until
from lil_sparse.engine.page_manager import PageManager, batch_rows
from lil_sparse.engine.sequence import Sequence
from lil_sparse.engine.step_attention import PolicyGroup, newest_pages
from lil_sparse.policies import POLICIES, PolicyBatch, get_policy

KeptTensors = tuple[PolicyBatch, tuple[torch.Tensor, torch.Tensor]]


class GroupTensors:
    """Each policy's group tensors of the last step and what they were built from (see the
    module docstring). At most one entry per policy."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[tuple[object, ...], KeptTensors]] = {}
        self.reused = 0  # groups whose tensors came from the step before
        self.built = 0

    def get(
        self,
        policy: str,
        member_seqs: list[Sequence],
        step_index: list[int],
        width: int,
        pages: PageManager,
    ) -> KeptTensors:
        """The group's batch (rows, block tables, budgets; ``layout`` None) and its ``(newest,
        newest_at)``: the last step's very tensors when nothing they depend on changed, else
        built now (one host-to-device copy and a few device ops)."""
        rows = batch_rows(member_seqs)
        versions = pages.table.versions
        key = (tuple(rows), tuple(step_index), width, tuple(versions[row.slot] for row in rows))
        kept = self._kept.get(policy)
        if kept is not None and kept[0] == key:
            self.reused += 1
            return kept[1]
        batch, _ = pages.policy_batch_of(rows, None, width, step_index)
        tensors = (batch, newest_pages(batch))
        self._kept[policy] = (key, tensors)
        self.built += 1
        return tensors


def build_policy_groups(
    seqs: list[Sequence],
    selecting: list[bool],
    last_page_len: torch.Tensor,
    width: int,
    step_rows: int,
    pages: PageManager,
    layouts: DecodeLayouts,
    kept: GroupTensors | None = None,
) -> list[PolicyGroup]:
    """Groups of rows whose policy selects or observes. ``selecting``: the selection gate's
    decision per sequence (:meth:`~lil_sparse.engine.selection_gate.SelectionGate.selecting`);
    ``step_rows``: sequences in the step, padding included. A selecting policy's request that
    does not select this step (it holds no more pages than its budget, or its group's selection
    cannot pay) stays out of the group and attends its base pages (the dense path: same pages in
    order, no selection work), so a step pays for selection only on rows that select and skips a
    group with none (a group that is not built keeps no graph key of its own). ``kept``: the
    tensors of the step before, reused where they still hold (:class:`GroupTensors`); None
    builds every group's anew."""
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
        if kept is None:
            batch, _ = pages.policy_batch(member_seqs, None, width, step_index=group_index)
            newest = newest_pages(batch)
        else:
            batch, newest = kept.get(name, member_seqs, group_index, width, pages)
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
        group = PolicyGroup(policy, batch, min(dense), max(dense), all_rows, sole, known_newest=newest)
        groups.append(group)
    return groups
