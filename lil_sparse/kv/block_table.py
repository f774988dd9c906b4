"""Per-sequence page lists, one row per (sequence slot, KV head), on the device.

``table[slot, head, i]`` is the i-th page the sequence in ``slot`` holds for ``head``. Every head
of a sequence holds the same number of pages (policies evict one page per head at a time), and
the newest page is always at index ``held - 1``. Retention policies never evict, so index ``i``
is the sequence's ``i``-th logical page (tokens ``i * page_size`` ..). Eviction policies keep the
row compacted in chronological order.

The host keeps the set of page ids each slot holds too (:meth:`hold`, :meth:`drop`), so that
releasing a finished sequence returns its pages without a device-to-host copy. Eviction on the
device never changes that set (a decode step's evicted page is recycled as the same row's newest
page); an eviction after prefill, which frees pages, reports them with :meth:`drop`.

Every write goes through :meth:`write_pages` or :meth:`write_rows`, and every write, acquire and
release of a slot bumps that slot's :attr:`versions` entry on the host: a decode step may keep
tensors gathered from a slot's rows (a policy group's table) for as long as the slot's version
stays (:mod:`lil_sparse.engine.policy_groups`).
"""

from __future__ import annotations

import torch


class BlockTable:
    """``table: [max_slots, num_kv_heads, max_pages_per_seq] int32`` plus a free list of slots."""

    def __init__(
        self, max_slots: int, num_kv_heads: int, max_pages_per_seq: int, device: torch.device
    ) -> None:
        self.table = torch.zeros(max_slots, num_kv_heads, max_pages_per_seq, dtype=torch.int32, device=device)
        self.num_kv_heads = num_kv_heads
        self.max_pages_per_seq = max_pages_per_seq
        self._free_slots = list(range(max_slots - 1, -1, -1))
        # _held[slot][head]: page ids the slot holds for that head (allocation order).
        self._held: list[list[list[int]]] = [[] for _ in range(max_slots)]
        # versions[slot]: bumped by every change of the slot's rows or owner (host ints).
        self.versions = [0] * max_slots

    def acquire_slot(self) -> int:
        if not self._free_slots:
            raise RuntimeError(
                "no free block-table slot; the scheduler admits at most max_batch_size sequences"
            )
        slot = self._free_slots.pop()
        self._held[slot] = [[] for _ in range(self.num_kv_heads)]
        self.versions[slot] += 1
        return slot

    def release_slot(self, slot: int) -> None:
        self._held[slot] = []
        self._free_slots.append(slot)
        self.versions[slot] += 1

    def write_pages(
        self, slots: list[int], heads: list[int], positions: list[int], pages: list[int]
    ) -> torch.Tensor:
        """Set ``table[slots[i], heads[i], positions[i]] = pages[i]`` (host lists of equal length),
        sent to the device in one non-blocking copy. Returns ``pages`` on the device, ``[n]
        int64``, for the caller's next device work on them."""
        packed = torch.tensor([slots, heads, positions, pages], dtype=torch.long).view(4, len(pages))
        packed = packed.to(self.table.device, non_blocking=True)
        if pages:
            self.table[packed[0], packed[1], packed[2]] = packed[3].to(torch.int32)
            for slot in set(slots):
                self.versions[slot] += 1
        return packed[3]

    def write_rows(self, slots: list[int], slot_index: torch.Tensor, rows: torch.Tensor) -> None:
        """Set the first ``W`` pages of every head of each of ``slots`` (host ints; ``slot_index``
        the same ``[n]`` int64 on the device) to ``rows: [n, num_kv_heads, W]`` int32, on the
        device with no host sync (an eviction's compacted rows)."""
        self.table[slot_index, :, : rows.shape[2]] = rows
        for slot in set(slots):
            self.versions[slot] += 1

    def hold(self, slot: int, pages: list[int]) -> None:
        """Count ``pages`` (``count`` per head, head-major: head ``h`` got ``pages[h * count :
        (h + 1) * count]``) as held by ``slot``; call once they are in the table for good."""
        count = len(pages) // self.num_kv_heads
        for head, held in enumerate(self._held[slot]):
            held.extend(pages[head * count : (head + 1) * count])

    def drop(self, slot: int, pages: list[int]) -> None:
        """``slot`` no longer holds ``pages`` (freed by an eviction)."""
        gone = set(pages)
        self._held[slot] = [[page for page in held if page not in gone] for held in self._held[slot]]

    def held_pages(self, slot: int) -> list[int]:
        """All page ids ``slot`` holds, head by head, from the host copy (no device sync)."""
        return [page for held in self._held[slot] for page in held]
