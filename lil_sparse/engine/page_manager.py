"""Which pages each sequence holds: allocation, eviction and release.

Host-side work is counting (how many pages, when a page boundary is crossed). Page ids are
chosen on the host only when they come from the free list; everything that depends on page
contents (which page an eviction policy drops) runs on the device for all rows at once.

Every method that takes pages from the pool or gives them back also updates the sequence's
``held_pages`` (and slot) before it returns, and undoes its allocation if a later part of it
raises: pages are never taken without being accounted to a sequence. With ``poison_freed_pages``
(a debug mode, used by the tests) every page that stops holding a sequence's tokens has its keys
set to NaN, so attending a slot nothing wrote turns the logits into NaN instead of silently
reading stale K/V.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.engine.sequence import Sequence
from lil_sparse.kv import BlockTable, KVCache, PagePool
from lil_sparse.policies import PolicyBatch, get_policy


def compact_rows(
    rows: torch.Tensor, scores: torch.Tensor, keep_count: torch.Tensor, held: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``keep_count`` best-scoring pages of each row, in their original order.

    ``rows: [n, W] int32`` page ids; ``scores: [n, W]``; ``keep_count, held: [n] int64``.
    Returns ``(compacted [n, W] int32, evicted [n, W] bool)`` where ``evicted`` marks the
    dropped entries of the *input* rows. Ties keep the older page (stable sort).
    """
    n, width = rows.shape
    slots = torch.arange(width, device=rows.device).unsqueeze(0)
    scores = scores.masked_fill(slots >= held.unsqueeze(1), float("-inf"))
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, slots.expand(n, -1).contiguous())
    keep = rank < keep_count.unsqueeze(1)
    evicted = ~keep & (slots < held.unsqueeze(1))
    target = torch.where(keep, keep.long().cumsum(dim=1) - 1, torch.full_like(order, width))
    compacted = torch.zeros(n, width + 1, dtype=rows.dtype, device=rows.device)
    compacted.scatter_(1, target, rows)
    return compacted[:, :width], evicted


class BatchRow(NamedTuple):
    """One sequence's row of a :class:`PolicyBatch` on the host: its block-table ``slot``, pages
    ``held``, pages to attend in a sparse layer (``select_count``), ``sink_pages``,
    ``recent_pages`` and ``dense_layers``."""

    slot: int
    held: int
    select_count: int
    sink_pages: int
    recent_pages: int
    dense_layers: int


BATCH_COLUMNS = len(BatchRow._fields)


class PageManager:
    def __init__(
        self,
        pool: PagePool,
        table: BlockTable,
        kv: KVCache,
        num_kv_heads: int,
        page_size: int,
        poison_freed_pages: bool = False,
    ) -> None:
        self.pool = pool
        self.table = table
        self.kv = kv
        self.num_kv_heads = num_kv_heads
        self.page_size = page_size
        self.device = table.table.device
        self.poison_freed_pages = poison_freed_pages
        if poison_freed_pages:
            kv.poison_pages(torch.arange(kv.num_pages, device=self.device))

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    # ---- allocation -------------------------------------------------------------------------
    def admit(self, seq: Sequence) -> None:
        """Give a sequence a block-table slot and pages for its whole prompt (all or nothing)."""
        if seq.slot >= 0:
            raise RuntimeError(f"{seq.request_id} already holds block-table slot {seq.slot}")
        seq.slot = self.table.acquire_slot()
        try:
            self._append_new_pages([seq], [self.pages_for(seq.num_prompt_tokens)])
        except BaseException:
            self.table.release_slot(seq.slot)
            seq.slot = -1
            raise

    def _append_new_pages(self, seqs: list[Sequence], counts: list[int]) -> None:
        """Append ``counts[i]`` fresh pages per KV head to ``seqs[i]`` (one device write) and
        count them in ``held_pages``. If anything after the allocation raises, the pages go back
        to the pool and no sequence changes."""
        pages = self.pool.allocate(sum(counts) * self.num_kv_heads)
        try:
            # Entry e of sequence i is head e // count at position held + e % count, in the order
            # the pages were handed out: plain lists (a few entries per step), one device copy.
            slots: list[int] = []
            heads: list[int] = []
            positions: list[int] = []
            for seq, count in zip(seqs, counts, strict=True):
                for head in range(self.num_kv_heads):
                    slots += [seq.slot] * count
                    heads += [head] * count
                    positions += range(seq.held_pages, seq.held_pages + count)
            self.kv.reset_pages(self.table.write_pages(slots, heads, positions, pages))
        except BaseException:
            self.pool.free(pages)
            raise
        start = 0
        for seq, count_added in zip(seqs, counts, strict=True):  # cannot raise: accounting is now
            seq.held_pages += count_added
            end = start + count_added * self.num_kv_heads
            self.table.hold(seq.slot, pages[start:end])
            start = end

    def prepare_decode(self, seqs: list[Sequence]) -> None:
        """Make room for the token each sequence writes this step.

        A sequence crossing a page boundary gets a new page per head, unless its eviction policy
        is at budget: then each head evicts one page and reuses it as the new page, on the device.
        """
        growing = [s for s in seqs if s.next_position % self.page_size == 0]
        # Split once, before any page is added: a sequence whose new page brings it exactly to its
        # budget must not also evict in the same step (that attended a page nothing wrote).
        recycling = [s for s in growing if _at_eviction_budget(s)]
        fresh = [s for s in growing if not _at_eviction_budget(s)]
        if fresh:
            self._append_new_pages(fresh, [1] * len(fresh))
        for group in _by_policy(recycling):
            self._evict_and_recycle(group)

    def _evict_and_recycle(self, seqs: list[Sequence]) -> None:
        batch, slot_index = self.policy_batch(seqs)
        scores = get_policy(seqs[0].policy).keep_scores(batch, self.kv)
        compacted, evicted = compact_rows(batch.table, scores, batch.held - 1, batch.held)
        # Exactly one page per row was evicted: it becomes the row's new, newest page.
        recycled = (batch.table.long() * evicted.long()).sum(dim=1).to(torch.int32)
        compacted.scatter_(1, (batch.held - 1).unsqueeze(1), recycled.unsqueeze(1))
        width = batch.table.shape[1]
        self.table.write_rows(
            [s.slot for s in seqs], slot_index, compacted.view(len(seqs), self.num_kv_heads, width)
        )
        if self.poison_freed_pages:  # the evicted tokens are gone: reading them is a bug
            self.kv.poison_pages(recycled.long())
        self.kv.reset_pages(recycled.long())

    def evict_after_prefill(self, seqs: list[Sequence]) -> None:
        """Bring eviction-policy sequences whose prompt exceeds the budget down to it."""
        over = [s for s in seqs if get_policy(s.policy).evicts and s.held_pages > s.budget_pages]
        for group in _by_policy(over):
            batch, slot_index = self.policy_batch(group)
            scores = get_policy(group[0].policy).keep_scores(batch, self.kv)
            keep = torch.tensor([s.budget_pages for s in group], device=self.device).repeat_interleave(
                self.num_kv_heads
            )
            compacted, evicted = compact_rows(batch.table, scores, keep, batch.held)
            # Prefill is not the per-token path: one host copy here returns pages to the pool.
            freed_rows = torch.where(evicted, batch.table, -1).tolist()
            width = batch.table.shape[1]
            self.table.write_rows(
                [s.slot for s in group], slot_index, compacted.view(len(group), self.num_kv_heads, width)
            )
            heads = self.num_kv_heads
            freed = []
            for index, seq in enumerate(group):
                rows = freed_rows[index * heads : (index + 1) * heads]
                seq_freed = [page for row in rows for page in row if page >= 0]
                self.table.drop(seq.slot, seq_freed)
                freed += seq_freed
            self._free(freed)
            for seq in group:
                seq.held_pages = seq.budget_pages

    def release(self, seq: Sequence) -> None:
        """Return every page and the slot of a finished or aborted sequence."""
        if seq.slot < 0:
            return
        pages = self.table.held_pages(seq.slot)
        self.table.release_slot(seq.slot)
        seq.slot = -1
        seq.held_pages = 0
        self._free(pages)

    def _free(self, pages: list[int]) -> None:
        """Return pages to the pool (poisoned first in the debug mode)."""
        if self.poison_freed_pages and pages:
            self.kv.poison_pages(torch.tensor(pages, dtype=torch.long).to(self.device, non_blocking=True))
        self.pool.free(pages)

    # ---- policy views ---------------------------------------------------------------------
    def policy_batch(
        self,
        seqs: list[Sequence],
        layout: DecodeLayout | None = None,
        width: int = 0,
        step_index: list[int] | None = None,
    ) -> tuple[PolicyBatch, torch.Tensor]:
        """Rows of ``seqs`` (every KV head) as a :class:`PolicyBatch`, plus their slot index,
        from one host-to-device copy.

        ``rows`` in the batch are the step's rows ``step_index[i] * num_kv_heads + head`` when
        ``step_index`` (each sequence's index in the decode step) is given, else local
        (0 .. n-1). ``width`` (default: the most pages any of them holds) is the table width.
        """
        return self.policy_batch_of(batch_rows(seqs), layout, width, step_index)

    def policy_batch_of(
        self,
        rows: list[BatchRow],
        layout: DecodeLayout | None = None,
        width: int = 0,
        step_index: list[int] | None = None,
    ) -> tuple[PolicyBatch, torch.Tensor]:
        """:meth:`policy_batch` from each sequence's :class:`BatchRow` (the start-up warm-up
        builds rows of no request with it: the same tensors, strides included, as a step's);
        ``width`` 0: the most pages a row holds."""
        heads = self.num_kv_heads
        width = width or max(row.held for row in rows)
        positions = range(len(rows)) if step_index is None else step_index
        host = [value for row in rows for value in row]
        host += [index * heads + head for index in positions for head in range(heads)]
        values = torch.tensor(host, dtype=torch.long).to(self.device, non_blocking=True)
        columns = values[: BATCH_COLUMNS * len(rows)].view(len(rows), BATCH_COLUMNS)
        slot_index = columns[:, 0]
        expanded = columns.repeat_interleave(heads, dim=0) if heads > 1 else columns
        table = self.table.table[slot_index, :, :width].reshape(len(rows) * heads, width)
        batch = PolicyBatch(
            rows=values[BATCH_COLUMNS * len(rows) :],
            table=table,
            held=expanded[:, 1],
            select_count=expanded[:, 2],
            sink_pages=expanded[:, 3],
            recent_pages=expanded[:, 4],
            dense_layers=expanded[:, 5],
            max_select=max(row.select_count for row in rows),
            num_kv_heads=heads,
            layout=layout,
        )
        return batch, slot_index


def batch_rows(seqs: list[Sequence]) -> list[BatchRow]:
    """Each sequence's :class:`BatchRow` (host values only)."""
    return [
        BatchRow(
            s.slot,
            s.held_pages,
            min(s.held_pages, s.budget_pages),
            s.sink_pages,
            s.recent_pages,
            s.options.sparse.dense_layers if get_policy(s.policy).has_dense_layers else 0,
        )
        for s in seqs
    ]


def _at_eviction_budget(seq: Sequence) -> bool:
    """An eviction policy holding its whole budget: its next page must replace an old one."""
    return get_policy(seq.policy).evicts and seq.held_pages >= seq.budget_pages


def _by_policy(seqs: list[Sequence]) -> list[list[Sequence]]:
    """``seqs`` split by policy (one vectorised call per policy), in order of first appearance."""
    groups: dict[str, list[Sequence]] = {}
    for seq in seqs:
        groups.setdefault(seq.policy, []).append(seq)
    return list(groups.values())
