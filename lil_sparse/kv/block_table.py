"""Per-sequence page lists, one row per (sequence slot, KV head), on the device.

``table[slot, head, i]`` is the i-th page the sequence in ``slot`` holds for ``head``. Every head
of a sequence holds the same number of pages (policies evict one page per head at a time), and
the newest page is always at index ``held - 1``. Retention policies never evict, so index ``i``
is the sequence's ``i``-th logical page (tokens ``i * page_size`` ..). Eviction policies keep the
row compacted in chronological order.
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

    def acquire_slot(self) -> int:
        if not self._free_slots:
            raise RuntimeError(
                "no free block-table slot; the scheduler admits at most max_batch_size sequences"
            )
        return self._free_slots.pop()

    def release_slot(self, slot: int) -> None:
        self._free_slots.append(slot)

    def write_pages(
        self, slots: torch.Tensor, heads: torch.Tensor, positions: torch.Tensor, pages: torch.Tensor
    ) -> None:
        """Set ``table[slots[i], heads[i], positions[i]] = pages[i]``; all ``[n] int64`` host
        tensors, sent to the device in one copy."""
        if pages.numel() == 0:
            return
        packed = torch.stack((slots, heads, positions, pages)).to(self.table.device, non_blocking=True)
        self.table[packed[0], packed[1], packed[2]] = packed[3].to(torch.int32)

    def held_pages(self, slot: int, held: int) -> list[int]:
        """All page ids a slot holds (host copy; used once when a sequence finishes)."""
        return self.table[slot, :, :held].flatten().tolist()
