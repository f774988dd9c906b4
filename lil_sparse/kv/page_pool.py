"""The free list of one-head KV pages.

A page holds ``page_size`` tokens of one KV head in every layer, so a sequence holds
``num_kv_heads`` pages per ``page_size`` tokens (one per head) and a policy that evicts per head
really frees memory. Allocation is host-side bookkeeping done by the scheduler between steps; the
page ids then live in the device block table.
"""

from __future__ import annotations


class OutOfPagesError(RuntimeError):
    """The pool cannot satisfy an allocation. The scheduler reserves pages so this never reaches a user."""


class PagePool:
    """A stack of free page ids ``0 .. num_pages - 1``."""

    def __init__(self, num_pages: int) -> None:
        if num_pages < 1:
            raise ValueError(f"num_pages: must be >= 1, got {num_pages}")
        self.num_pages = num_pages
        # Reversed so that allocation hands out low ids first: easier to read in tests and traces.
        self._free: list[int] = list(range(num_pages - 1, -1, -1))
        self._is_free = bytearray(b"\x01") * num_pages

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self._free)

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise OutOfPagesError(f"asked for {count} pages, {len(self._free)} free")
        pages = [self._free.pop() for _ in range(count)]
        for page in pages:
            self._is_free[page] = 0
        return pages

    def free(self, pages: list[int]) -> None:
        """Return ``pages``; all or nothing (raises ``ValueError`` before freeing any if one of
        them is not allocated or appears twice)."""
        if len(set(pages)) != len(pages):
            raise ValueError("pages: a page appears twice")
        for page in pages:
            if not 0 <= page < self.num_pages or self._is_free[page]:
                raise ValueError(f"page {page} is not an allocated page")
        for page in pages:
            self._is_free[page] = 1
            self._free.append(page)
