"""Launch shape and scratch of :func:`lil_sparse.kernels.quest_chain.quest_chain`, the persistent
Quest kernel (measured slower than the three kernels it would replace; the engine does not use
it): :class:`ChainShape`, :func:`chain_shape` and :class:`QuestChainScratch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

SCORE_SLOTS = 256
"""Slots one scoring item scores (in blocks of :data:`SCORE_BLOCK`): 128 KiB of bf16 bounds at
head_dim 128."""
SCORE_BLOCK = 64
ATTEND_PAGES = 64
"""Chosen pages per attention item, about (:func:`chain_shape`): 512 KiB of bf16 K and V at the
benchmark shapes."""
BLOCK_PAGES = 4
"""Pages an attention item folds in per loop step (64 tokens of 16)."""
SYNC_HEADER = 2  # [claimed items, exited programs], then per row [scored, selected, attended]


@dataclass(frozen=True)
class ChainShape:
    """Launch shape of ``quest_chain``: ``attend_items`` per row, the stage lags, ``programs`` in
    the grid, ``warps`` per program, ``block_pages`` per attention loop step, ``score_block`` slots
    per scoring step and ``stages`` (above 1: the attention's page loop software-pipelined with
    that many steps in flight). ``attend_items``, ``warps``, ``block_pages`` and ``score_block``
    are positive powers of two, ``score_block`` at most :data:`SCORE_SLOTS`; the lags are at least
    0 (a negative lag would queue a row's top-k before its scoring, which would then wait
    forever); ``programs`` and ``stages`` at least 1. Raises ``ValueError`` otherwise."""

    attend_items: int
    lag_select: int
    lag_attend: int
    programs: int
    warps: int = 8
    block_pages: int = BLOCK_PAGES
    score_block: int = SCORE_BLOCK
    stages: int = 1

    def __post_init__(self) -> None:
        for name in ("attend_items", "warps", "block_pages", "score_block"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"ChainShape.{name} must be a positive power of two, got {value}")
        if self.score_block > SCORE_SLOTS:
            raise ValueError(f"ChainShape.score_block must be at most {SCORE_SLOTS}, got {self.score_block}")
        for name in ("lag_select", "lag_attend"):
            if getattr(self, name) < 0:
                raise ValueError(f"ChainShape.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("programs", "stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"ChainShape.{name} must be >= 1, got {getattr(self, name)}")


def chain_shape(
    max_pages: int,
    num_sms: int,
    lag_select: int = 4,
    lag_attend: int = 12,
    programs_per_sm: int = 2,
    attend_pages: int = ATTEND_PAGES,
    **tiles: int,
) -> ChainShape:
    """The shape for rows attending at most ``max_pages`` pages each on ``num_sms`` SMs:
    ``cdiv(max_pages, attend_pages)`` attention items per row (a power of two, at least 1) and
    ``programs_per_sm`` programs per SM; ``tiles``: :class:`ChainShape`'s other fields. The lags
    are in stages (a stage claims one row's scoring, one top-k and one row's attention items)."""
    items = max(1, triton.next_power_of_2(-(-max_pages // attend_pages)))
    return ChainShape(items, lag_select, lag_attend, programs_per_sm * num_sms, **tiles)


@dataclass
class QuestChainScratch:
    """Per-slot buffers of :func:`quest_chain`: ``scores: [rows, width] float32``, ``chosen: [rows,
    width] int32`` page lists, ``partial_out: [rows, A, G, D] float32``, ``partial_lse: [rows, A, G]
    float32`` and ``sync: [2 + 3 rows] int32`` counters (zero between calls)."""

    scores: torch.Tensor
    chosen: torch.Tensor
    partial_out: torch.Tensor
    partial_lse: torch.Tensor
    sync: torch.Tensor

    @classmethod
    def allocate(
        cls, rows: int, width: int, group: int, head_dim: int, attend_items: int, device: torch.device
    ) -> QuestChainScratch:
        """Buffers for ``rows`` rows of ``width`` slots, ``group`` query heads of ``head_dim``,
        ``attend_items`` attention items per row, on ``device``; the counters zeroed."""
        return cls(
            torch.empty(rows, width, dtype=torch.float32, device=device),
            torch.empty(rows, width, dtype=torch.int32, device=device),
            torch.empty(rows, attend_items, group, head_dim, dtype=torch.float32, device=device),
            torch.empty(rows, attend_items, group, dtype=torch.float32, device=device),
            torch.zeros(SYNC_HEADER + 3 * rows, dtype=torch.int32, device=device),
        )

    def shape_for(self) -> tuple[int, int, int, int, int]:
        """``(rows, width, group, head_dim, attend_items)`` these buffers are for; raises
        ``ValueError`` when the buffers disagree with one another."""
        rows, width = self.scores.shape
        _, items, group, head_dim = self.partial_out.shape
        if (
            self.chosen.shape != (rows, width)
            or self.partial_out.shape[0] != rows
            or self.partial_lse.shape != (rows, items, group)
            or self.sync.shape != (SYNC_HEADER + 3 * rows,)
        ):
            raise ValueError("QuestChainScratch: buffers of different shapes (use allocate)")
        return rows, width, group, head_dim, items
