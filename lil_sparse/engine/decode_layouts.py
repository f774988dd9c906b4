"""The decode step's per-layer attention layouts: how many pages each row attends in each layer.

Layers with equal page counts share one :class:`DecodeLayout` (one plan), and the device geometry
of a layout (counts, CSR offsets, entry positions) is cached: it depends only on the page counts
and the table width, which change once per ``page_size`` tokens of a row.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.engine.sequence import Sequence
from lil_sparse.policies import get_policy

GEOMETRY_CACHE = 16  # decode layout geometries kept (a step uses one per distinct dense range)


def dense_until(seq: Sequence) -> int:
    """Leading layers where ``seq`` attends every held page (Quest's dense layers)."""
    return seq.options.sparse.dense_layers if get_policy(seq.policy).has_dense_layers else 0


def distinct_layouts(layouts: list[DecodeLayout]) -> list[DecodeLayout]:
    """``layouts`` without repeats (by identity), in first-seen order."""
    seen: dict[int, DecodeLayout] = {}
    for layout in layouts:
        seen.setdefault(id(layout), layout)
    return list(seen.values())


def longest_first(per_seq: list[tuple[int, int, int]]) -> list[int] | None:
    """The step's sequence order, longest rows first: by the pages a sparse layer attends, then
    (for requests with dense layers) the pages a dense layer attends, then held pages; stable.

    ``per_seq``: :meth:`DecodeLayouts.page_counts`. Returns ``None`` when the order is already
    that one. Rows of similar length then sit next to each other, so a backend can run very
    unequal rows as separate calls over contiguous rows
    (:func:`lil_sparse.attention.decode_split.choose_split`).
    """
    order = sorted(
        range(len(per_seq)),
        key=lambda i: (-per_seq[i][2], -per_seq[i][1] if per_seq[i][0] else 0, -per_seq[i][1]),
    )
    return None if order == list(range(len(per_seq))) else order


class DecodeLayouts:
    """Builds each step's layer layouts over a cache of layout geometries."""

    def __init__(self, num_layers: int, num_kv_heads: int) -> None:
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self._geometry: dict[tuple[tuple[int, ...], int], DecodeLayout] = {}

    def page_counts(self, seqs: list[Sequence], selecting: list[bool]) -> list[tuple[int, int, int]]:
        """Per sequence: (leading layers that attend densely, pages a dense layer attends, pages a
        sparse layer attends). ``selecting``: the step's decision per sequence
        (:meth:`SelectionGate.selecting`); a selecting policy's request that does not select this
        step (within its budget, or gated off) attends every held page in every layer."""
        counts = []
        for seq, selects in zip(seqs, selecting, strict=True):
            policy = get_policy(seq.policy)
            if policy.selects_per_layer and not selects:
                counts.append((0, seq.held_pages, seq.held_pages))
                continue
            sparse = policy.attended_pages(seq.held_pages, seq.budget_pages)
            counts.append((min(dense_until(seq), self.num_layers), seq.held_pages, sparse))
        return counts

    def layer_layouts(
        self,
        per_seq: list[tuple[int, int, int]],
        last_page_len: torch.Tensor,
        last_page_len_host: tuple[int, ...],
        width: int,
        pad: int = 0,
    ) -> list[DecodeLayout]:
        """One layout per layer from :meth:`page_counts`; layers with equal page counts share one
        object (one plan). ``pad`` padding sequences read one page per row (the scratch page)."""
        thresholds = sorted({0, *(dense for dense, _, _ in per_seq)})
        heads = self.num_kv_heads
        layouts: list[DecodeLayout] = []
        for start, end in zip(thresholds, [*thresholds[1:], self.num_layers], strict=True):
            counts = [held if start < dense else sparse for dense, held, sparse in per_seq]
            row_counts = counts if heads == 1 else [count for count in counts for _ in range(heads)]
            row_counts.extend([1] * (pad * heads))
            layout = self.layout(row_counts, last_page_len, last_page_len_host, width)
            layouts.extend([layout] * (end - start))
        return layouts

    def layout(
        self,
        counts: list[int],
        last_page_len: torch.Tensor,
        last_page_len_host: tuple[int, ...],
        width: int,
    ) -> DecodeLayout:
        """``DecodeLayout.build`` with this step's ``last_page_len`` (``width``: the stride, 0 for
        none), reusing the device geometry (counts, CSR offsets, entry positions), which depends
        only on the page counts and the width: page counts change once per ``page_size`` tokens
        of a row, so most steps build no geometry at all. Layouts are read-only, so a cached one
        is shared safely."""
        key = (tuple(counts), width)
        geometry = self._geometry.get(key)
        if geometry is None:
            geometry = DecodeLayout.build(counts, last_page_len, last_page_len_host, stride=width)
            if len(self._geometry) >= GEOMETRY_CACHE:
                self._geometry.pop(next(iter(self._geometry)))  # the oldest
            self._geometry[key] = geometry
            return geometry
        return replace(geometry, last_page_len=last_page_len, last_page_len_host=last_page_len_host)
