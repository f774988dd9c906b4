"""Top-k page selection written straight into the attention kernel's page list: one kernel per layer.

After a policy scored every slot of its rows (``lil_sparse.kernels.page_scores``), the engine
needs, per row, the page ids of the ``count`` best older slots followed by the row's newest page,
in the CSR page list (``indices`` at ``indptr[row]``) that FlashInfer's planned decode reads. The
PyTorch path does that in about eight launches per layer (``torch.topk``, its sort, a gather, a
concatenation, a scatter for the newest page, a copy into the step's page table and the CSR
repack); here it is one program per row:

1. **Ranking scores** and 2. **the threshold by radix select** (``lil_sparse.kernels.radix_select``):
   the ``count``-th largest of the row's order-preserving 32-bit keys, found by up to four
   passes over 8-bit digits, most significant first (FlashInfer's top-k and PyTorch's
   ``gatherTopK`` select the same way), stopping early once a pass settles the set.
3. **Compaction.** Keys ``> T`` are taken, and keys ``== T`` in slot order until ``count`` are
   taken (ties go to the older slot). A prefix sum gives each taken slot its place, block after
   block (the tail last, its tie ranks continuing the main block's), so the pages come out in
   slot order (oldest first) and the newest page is written last, where ``last_page_len``
   applies.

The selected *set* equals ``torch.topk``'s for distinct scores; among equal scores ``topk``'s
choice is unspecified and this kernel's is the older slot. The reference is
:meth:`lil_sparse.policies.base.PageScores.ranked` and :func:`lil_sparse.policies.base.top_slots`
followed by the gathers of :meth:`lil_sparse.engine.step_attention.DecodeAttention._select_reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.launcher import KernelLauncher
from lil_sparse.kernels.pdl import launch_options, use_pdl, wait_for_previous
from lil_sparse.kernels.radix_select import (
    block_keys,
    block_layout,
    radix_pass,
    ranking_keys,
    settled_threshold,
    write_taken,
)

# Measured on the H200 (bench/select_micro.py, kernel time in a CUDA graph, 2026-11-30), before
# the main + tail layout, with these same block layouts: at 2048 slots radix with 8 warps 11.7 us,
# bisection 14.1 us (4 warps), topk + gather 26 us; at 256 slots radix with 4 warps 5.2 us; at
# 8192 radix/8 warps 37 us, topk + gather 58 us. 2304 slots padded to 4096 took 21.0 us per layer
# in the 8B/batch 8/32k step's profile. With the main + tail layout and the early exit (H200,
# 16:29 UTC, `--rows 64,8,48 --widths 2304,2048 --variants radix4,radix --warps 4,8`, printed
# output): 2304 slots 12.0 us with the exit and 8 warps, 14.3 without (12.7 / 13.5 with 4 warps);
# 2048 slots 9.9 against 11.8 us; 8 and 48 rows take as long as 64. In the 8B/batch 8/32k step
# (two repeats, same call) infllm@4096 went from 7.02 to 6.94 ms; quest@4096 stayed at 7.38-7.40.
RADIX = True


@triton.jit
def _select_pages(
    scores_ptr,  # [rows, width] float32 (row stride scores_stride)
    count_ptr,  # [rows] int64: older pages to take
    table_ptr,  # [rows, >= width] int32: slot -> page id
    newest_ptr,  # [rows] int32 (stride newest_stride): the row's newest page, written last
    held_ptr,  # [rows] int64 (stride window_stride): pages held (WINDOWS only)
    sink_ptr,  # [rows] int64: leading slots forced in (WINDOWS only)
    recent_ptr,  # [rows] int64: trailing slots forced in (WINDOWS only)
    out_row_ptr,  # [rows] int64: the row's index in the CSR list (unused when IDENTITY)
    indptr_ptr,  # [all_rows + 1] int32
    indices_ptr,  # [capacity] int32: written
    width,
    scores_stride,
    table_stride,
    newest_stride,
    window_stride,
    SHARE: tl.constexpr,
    WINDOWS: tl.constexpr,
    IDENTITY: tl.constexpr,
    BLOCK: tl.constexpr,  # see radix_select.block_layout
    TAIL: tl.constexpr,
    NUM_BLOCKS: tl.constexpr,
    RADIX: tl.constexpr,
    EARLY_EXIT: tl.constexpr,  # radix only: stop after the pass that settles the selected set
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    row = tl.program_id(0)
    count = tl.load(count_ptr + row)
    row_scores = scores_ptr + (row // SHARE) * SHARE * scores_stride  # the sequence's first row
    held = 0
    sink = 0
    recent = 0
    if WINDOWS:
        held = tl.load(held_ptr + row * window_stride)
        sink = tl.load(sink_ptr + row * window_stride)
        recent = tl.load(recent_ptr + row * window_stride)
    if IDENTITY:  # noqa: SIM108 (a constexpr branch: Triton compiles one side)
        start = tl.load(indptr_ptr + row)
    else:
        start = tl.load(indptr_ptr + tl.load(out_row_ptr + row))
    # The row in registers across the passes (when NUM_BLOCKS == 1): main block, then tail block.
    resident = ranking_keys(
        row_scores, scores_stride, tl.arange(0, BLOCK), width, held, sink, recent, SHARE, WINDOWS, ""
    )
    tail = resident  # unread unless TAIL > 0: one argument list for the passes
    if TAIL > 0:
        tail_slots = BLOCK + tl.arange(0, TAIL)
        tail = ranking_keys(
            row_scores, scores_stride, tail_slots, width, held, sink, recent, SHARE, WINDOWS, ""
        )
    # 1-2. The count-th largest key T: the largest t with #(key >= t) >= count.
    if RADIX and EARLY_EXIT:  # 8-bit radix passes until one settles the set
        prefix, remaining = settled_threshold(
            resident, tail, count, row_scores, scores_stride, width, held, sink, recent,
            SHARE, WINDOWS, BLOCK, TAIL, NUM_BLOCKS,
        )  # fmt: skip
    elif RADIX:  # all four passes over 8-bit digits, a 256-bin histogram each
        prefix = tl.zeros((), tl.int64)
        remaining = count
        for step in range(4):
            prefix, remaining, _ = radix_pass(
                resident, tail, prefix, remaining, 24 - 8 * step, row_scores, scores_stride, width,
                held, sink, recent, SHARE, WINDOWS, BLOCK, TAIL, NUM_BLOCKS, False,
            )  # fmt: skip
    else:  # bisection over the 32-bit key range, one bit per pass
        prefix = tl.zeros((), tl.int64)  # low: #(key >= low) >= count
        high = tl.full((), 4294967295, tl.int64)
        greater = tl.zeros((), tl.int64)  # #(key > high), below count
        for _ in range(32):
            mid = prefix + (high - prefix + 1) // 2
            above = tl.zeros((), tl.int64)
            for block in range(NUM_BLOCKS):
                keys = block_keys(
                    resident, block, row_scores, scores_stride, width, held, sink, recent,
                    SHARE, WINDOWS, BLOCK, NUM_BLOCKS,
                )  # fmt: skip
                above += tl.sum((keys >= mid).to(tl.int64), axis=0)
            if TAIL > 0:
                above += tl.sum((tail >= mid).to(tl.int64), axis=0)
            enough = above >= count
            prefix = tl.where(enough, mid, prefix)
            high = tl.where(enough, high, mid - 1)
            greater = tl.where(enough, greater, above)
        remaining = count - greater  # low == high: ties at T still to take
    # 3. Compaction in slot order (main blocks, then the tail): every key above T, then ties at
    # T, oldest first; the tail's tie ranks continue from the main block's.
    written = tl.zeros((), tl.int64)
    ties_seen = tl.zeros((), tl.int64)
    pages_ptr = table_ptr + row * table_stride
    for block in range(NUM_BLOCKS):
        keys = block_keys(
            resident, block, row_scores, scores_stride, width, held, sink, recent,
            SHARE, WINDOWS, BLOCK, NUM_BLOCKS,
        )  # fmt: skip
        slots = block * BLOCK + tl.arange(0, BLOCK)
        written, ties_seen = write_taken(
            keys, slots, prefix, remaining, written, ties_seen, pages_ptr, indices_ptr + start
        )
    if TAIL > 0:
        written, ties_seen = write_taken(
            tail, tail_slots, prefix, remaining, written, ties_seen, pages_ptr, indices_ptr + start
        )
    tl.store(indices_ptr + start + count, tl.load(newest_ptr + row * newest_stride))


def select_pages(
    scores: torch.Tensor,
    count: torch.Tensor,
    table: torch.Tensor,
    newest: torch.Tensor,
    out_rows: torch.Tensor | None,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    share: int = 1,
    windows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    radix: bool = RADIX,
    num_warps: int = 0,
    early_exit: bool = True,
) -> None:
    """Write each row's ``count`` best older pages, then its newest page, into a CSR page list.

    - ``scores: [rows, width] float32``: row ``r`` ranks its slots by the sum of score rows
      ``s .. s + share - 1`` (``s = r - r % share``: InfLLM sums a sequence's KV-head rows).
    - ``windows``: ``(held, sink_pages, recent_pages)``, each ``[rows] int64`` (one stride), or
      ``None``. When given, slots ``< sink_pages`` and ``>= held - recent_pages`` rank ``+inf``
      and slots ``>= held - 1`` ``-inf`` (after the sum). Without it the scores must already be
      ``-inf`` where a slot must not be chosen (the newest page, padding).
    - ``count: [rows] int64``: older pages to take, at most the row's slots ranked above ``-inf``.
    - ``table: [rows, >= width] int32``: each row's page ids by slot; ``newest: [rows]`` (any
      stride) int32 page ids.
    - ``out_rows: [rows] int64`` or ``None``: the row of ``indptr`` each row writes at (``None``:
      row ``r`` writes at ``indptr[r]``).
    - ``indptr: [R + 1] int32`` and ``indices: [capacity] int32``: the planned decode's page list;
      row ``r`` writes ``indices[indptr[o] : indptr[o] + count[r] + 1]`` (``o = out_rows[r]``), and
      the plan must give it exactly ``count[r] + 1`` pages.
    - ``radix`` (else bisection), ``num_warps`` (0: 8 above 1024 slots, else 4) and ``early_exit``
      (radix only; ``False`` runs all four passes, for A/B timing) pick the kernel variant; every
      variant writes the same pages.

    No host sync; the launch shape depends only on the tensors' shapes (CUDA-graph safe).
    Raises ``ValueError`` on mismatched shapes or a non-unit inner stride.
    """
    rows, width = table.shape[0], scores.shape[1]
    if rows == 0:
        return
    if scores.shape[0] != rows or rows % share or count.shape != (rows,) or newest.shape[0] != rows:
        raise ValueError(
            f"select_pages: {rows} rows, scores {tuple(scores.shape)} (share {share}), "
            f"count {tuple(count.shape)}, newest {tuple(newest.shape)}"
        )
    if scores.stride(1) != 1 or table.stride(1) != 1 or table.shape[1] < width:
        raise ValueError("select_pages: scores and table must be contiguous rows, table at least as wide")
    if out_rows is not None and out_rows.shape != (rows,):
        raise ValueError(f"select_pages: out_rows must be [{rows}], got {tuple(out_rows.shape)}")
    held, sink, recent = windows if windows is not None else (count, count, count)
    if len({held.stride(0), sink.stride(0), recent.stride(0)}) != 1:
        raise ValueError("select_pages: held, sink_pages and recent_pages must share one stride")
    block, tail, num_blocks = block_layout(width)
    _SELECT_PAGES(
        (rows,),
        scores,
        count.contiguous(),
        table,
        newest,
        held,
        sink,
        recent,
        count if out_rows is None else out_rows.contiguous(),
        indptr,
        indices,
        width,
        scores.stride(0),
        table.stride(0),
        newest.stride(0),
        held.stride(0),
        SHARE=share,
        WINDOWS=windows is not None,
        IDENTITY=out_rows is None,
        BLOCK=block,
        TAIL=tail,
        NUM_BLOCKS=num_blocks,
        RADIX=radix,
        EARLY_EXIT=early_exit,
        PDL=use_pdl(scores),
        num_warps=num_warps or (8 if width > 1024 else 4),  # as when those rows were padded to >= 2048
        **launch_options(scores),
    )


# Direct launches once a specialization is known (lil_sparse/kernels/launcher.py).
_SELECT_PAGES = KernelLauncher(_select_pages)
