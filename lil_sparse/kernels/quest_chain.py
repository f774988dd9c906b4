"""Quest's decode attention for one layer in one persistent kernel: scoring, top-k and attention,
row by row, so one row's latency-bound top-k runs while other rows stream bounds and pages.

**Status: measured slower than the three kernels it would replace; the engine does not use it.**
At the 8B shape, batch 8, 32k tokens, Quest@4096 (64 rows), the best of 13 shapes took 136.5 us
a layer against 83.1 us for the three kernels, the worst 273.9 (H200, 2026-12-02 00:37-00:43
UTC, ``bench/quest_overlap_micro.py --chain``, docs/bench/quest_chain.md). It is kept, with its
tests, as the measured answer to issue 11's T4 question (can hiding the top-k under other rows'
streaming pay?) and as the starting point for tuning its per-program bandwidth.

Run as three kernels (:func:`~lil_sparse.kernels.page_scores.quest_scores`,
:func:`~lil_sparse.kernels.page_select.select_pages`, then the planned decode), a Quest layer at
the 8B shape, batch 8, 32k tokens took 81.6 us against 48.1 us of bytes (H200, 2026-12-02,
docs/bench/quest_chain.md): the top-k (12.2 us) and each kernel's fixed costs run while HBM idles.
Here a grid of a few programs per SM (two by default; 1-4 measured) claims work items from a
counter, in an order that staggers the rows: item stage ``t`` holds row ``t``'s scoring items,
row ``t - LAG_SELECT``'s top-k and row ``t - LAG_SELECT - LAG_ATTEND``'s attention items. An
item waits (spinning on a per-row counter in global memory, acquire) for the items of its row it
depends on, which come
earlier in the order: a program claims an item only after every earlier item was claimed by a
running program, so the wait always ends (the scheme of decoupled look-back and Stream-K).

- **Scoring item**: :data:`SCORE_SLOTS` slots of a row, as :mod:`lil_sparse.kernels.page_scores`
  scores them (Quest's bound summed over the group), into the row's fp32 scores.
- **Top-k item**: the radix select of :mod:`lil_sparse.kernels.radix_select` over the row's
  scores (loaded past L1: another program wrote them), writing the ``count`` best older pages in
  slot order, then the newest page, into the row's page list: what
  :func:`~lil_sparse.kernels.page_select.select_pages` writes.
- **Attention item**: one of ``ATTEND_ITEMS`` equal runs of the row's chosen pages, attended as
  :mod:`lil_sparse.kernels.paged_decode` attends a split (online softmax, normalised partial and
  base-2 log-sum-exp); the row's last item to finish merges the partials into the output.

The last program to exit zeroes the counters, so the next call (a CUDA-graph replay) starts
clean. On CPU, Triton's interpreter runs the programs one after another: the first claims every
item in order, finding each item's dependencies done. The reference is the three kernels (and
their PyTorch references): ``tests/kernels/test_quest_chain.py``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.fused_layers import TL_DTYPES
from lil_sparse.kernels.launcher import KernelLauncher
from lil_sparse.kernels.paged_decode import LOG2E, attend_split
from lil_sparse.kernels.pdl import launch_options, use_pdl, wait_for_previous
from lil_sparse.kernels.quest_chain_shape import SCORE_SLOTS, SYNC_HEADER, ChainShape, QuestChainScratch
from lil_sparse.kernels.radix_select import (
    MAX_BLOCK,
    block_layout,
    ranking_keys,
    settled_threshold,
    write_taken,
)


@triton.jit
def _wait_until(flag_ptr, target):
    """Spin until the counter at ``flag_ptr`` reaches ``target`` (acquire: what its writers
    published before their release is then visible)."""
    seen = tl.atomic_add(flag_ptr, 0, sem="acquire")
    while seen < target:
        seen = tl.atomic_add(flag_ptr, 0, sem="acquire")


@triton.jit
def _score_item(
    q_ptr, bounds_ptr, table_ptr, held_ptr, scores_ptr, row, part, width, table_stride, held_stride,
    bounds_page_stride, bounds_half_stride, G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr,
    SLOTS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Quest's page scores of one row's slots ``part * SCORE_SLOTS ..`` (page_scores' rule: the
    bound summed over the group; ``-inf`` from slot ``held - 1`` on) into its fp32 scores."""
    dims = tl.arange(0, D)
    heads = tl.arange(0, G_PAD)
    q = tl.load(q_ptr + (row * G + heads[:, None]) * D + dims[None, :], mask=heads[:, None] < G, other=0.0)
    q = q.to(tl.float32)
    q_pos = tl.sum(tl.maximum(q, 0.0), axis=0)  # [D]
    q_neg = tl.sum(tl.minimum(q, 0.0), axis=0)
    limit = tl.load(held_ptr + row * held_stride) - 1  # the newest page is added by the top-k
    for block in tl.static_range(SLOTS // BLOCK):
        slots = part * SLOTS + block * BLOCK + tl.arange(0, BLOCK)
        valid = (slots < limit) & (slots < width)
        pages = tl.load(table_ptr + row * table_stride + slots, mask=valid, other=0).to(tl.int64)
        base = bounds_ptr + pages[:, None] * bounds_page_stride + dims[None, :]
        key_min = tl.load(base, mask=valid[:, None], other=0.0).to(tl.float32)
        key_max = tl.load(base + bounds_half_stride, mask=valid[:, None], other=0.0).to(tl.float32)
        score = tl.sum(key_min * q_neg[None, :] + key_max * q_pos[None, :], axis=1)
        tl.store(scores_ptr + row * width + slots, tl.where(valid, score, float("-inf")), mask=slots < width)


@triton.jit
def _select_item(
    scores_ptr, count_ptr, table_ptr, newest_ptr, chosen_ptr, row, width, table_stride, newest_stride,
    BLOCK: tl.constexpr, TAIL: tl.constexpr,
):  # fmt: skip
    """The row's ``count`` best older pages in slot order, then its newest page, into its page
    list (page_select's rule: ties to the older slot)."""
    count = tl.load(count_ptr + row)
    row_scores = scores_ptr + row * width
    resident = ranking_keys(row_scores, width, tl.arange(0, BLOCK), width, 0, 0, 0, 1, False, ".cg")
    tail = resident  # unread unless TAIL > 0
    if TAIL > 0:
        tail = ranking_keys(row_scores, width, BLOCK + tl.arange(0, TAIL), width, 0, 0, 0, 1, False, ".cg")
    threshold, ties_wanted = settled_threshold(
        resident, tail, count, row_scores, width, width, 0, 0, 0, 1, False, BLOCK, TAIL, 1
    )
    pages_ptr = table_ptr + row * table_stride
    out_ptr = chosen_ptr + row * width
    written, ties_seen = write_taken(
        resident, tl.arange(0, BLOCK), threshold, ties_wanted, tl.zeros((), tl.int64),
        tl.zeros((), tl.int64), pages_ptr, out_ptr,
    )  # fmt: skip
    if TAIL > 0:
        write_taken(
            tail, BLOCK + tl.arange(0, TAIL), threshold, ties_wanted, written, ties_seen, pages_ptr, out_ptr
        )
    tl.store(out_ptr + count, tl.load(newest_ptr + row * newest_stride))


@triton.jit
def _attend_item(
    q_ptr, k_ptr, v_ptr, count_ptr, last_ptr, chosen_ptr, partial_out_ptr, partial_lse_ptr, row, item,
    width, scale_log2, G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, S: tl.constexpr,
    ITEMS: tl.constexpr, BLOCK_PAGES: tl.constexpr, STAGES: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Attention over run ``item`` of the row's ``count + 1`` chosen pages: its normalised partial
    output and base-2 log-sum-exp (paged_decode's split; an empty run stores 0 and ``-inf``)."""
    pages = tl.load(count_ptr + row) + 1
    per_item = tl.cdiv(pages, ITEMS)
    begin = item * per_item
    attend_split(
        q_ptr, k_ptr, v_ptr, chosen_ptr, row * width, pages, tl.load(last_ptr + row), begin,
        tl.minimum(begin + per_item, pages), row, row * ITEMS + item, scale_log2, partial_out_ptr,
        partial_lse_ptr, G, G_PAD, D, S, BLOCK_PAGES, STAGES, STAGES > 1, UPCAST, ".cg",
    )  # fmt: skip


@triton.jit
def _merge_row(
    partial_out_ptr, partial_lse_ptr, out_ptr, row, G: tl.constexpr, D: tl.constexpr, ITEMS: tl.constexpr,
    DTYPE: tl.constexpr,
):  # fmt: skip
    """The log-sum-exp-weighted mean of the row's ``ITEMS`` partials, per query head (paged_decode's
    merge), rounded to the output dtype once."""
    items = tl.arange(0, ITEMS)
    dims = tl.arange(0, D)
    for head in tl.static_range(G):
        lses = tl.load(partial_lse_ptr + (row * ITEMS + items) * G + head, cache_modifier=".cg")
        parts = tl.load(
            partial_out_ptr + ((row * ITEMS + items[:, None]) * G + head) * D + dims[None, :],
            cache_modifier=".cg",
        )
        top = tl.max(lses, axis=0)
        top = tl.where(top == float("-inf"), 0.0, top)
        weights = tl.exp2(lses - top)
        total = tl.sum(weights, axis=0)
        merged = tl.sum(weights[:, None] * parts, axis=0) / tl.where(total > 0.0, total, 1.0)
        tl.store(out_ptr + (row * G + head) * D + dims, merged.to(DTYPE))


@triton.jit
def _quest_chain(
    q_ptr,  # [rows, G, D] contiguous, bf16 or fp16
    bounds_ptr,  # [P, 2, D]: page p's key min at p * page stride, its max half a stride on
    table_ptr,  # [rows, >= width] int32: slot -> page id
    held_ptr,  # [rows] int64 (stride held_stride): pages held; slots >= held - 1 score -inf
    count_ptr,  # [rows] int64: older pages to take (at most held - 1)
    newest_ptr,  # [rows] int32 (stride newest_stride): the newest page, attended last
    last_ptr,  # [rows] int32: tokens in the newest page (1..S)
    k_ptr,  # [P, 1, S, D] contiguous
    v_ptr,
    scores_ptr,  # [rows, width] float32 scratch
    chosen_ptr,  # [rows, width] int32 scratch: each row's page list
    partial_out_ptr,  # [rows, ITEMS, G, D] float32
    partial_lse_ptr,  # [rows, ITEMS, G] float32
    out_ptr,  # [rows, G, D], q's dtype
    sync_ptr,  # [2 + 3 rows] int32, zero on entry and on exit
    rows,
    width,
    table_stride,
    held_stride,
    newest_stride,
    bounds_page_stride,
    bounds_half_stride,
    scale_log2,
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    S: tl.constexpr,
    SCORE_ITEMS: tl.constexpr,
    SCORE_SLOTS: tl.constexpr,
    SCORE_BLOCK: tl.constexpr,
    ITEMS: tl.constexpr,
    BLOCK_PAGES: tl.constexpr,
    STAGES: tl.constexpr,
    HEADER: tl.constexpr,
    LAG_SELECT: tl.constexpr,
    LAG_ATTEND: tl.constexpr,
    BLOCK: tl.constexpr,
    TAIL: tl.constexpr,
    UPCAST: tl.constexpr,
    DTYPE: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    per_stage = SCORE_ITEMS + 1 + ITEMS
    total = (rows + LAG_SELECT + LAG_ATTEND) * per_stage
    item = tl.atomic_add(sync_ptr, 1, sem="relaxed")
    while item < total:
        stage = item // per_stage
        kind = item % per_stage
        if kind < SCORE_ITEMS:
            row = stage
            if row < rows:
                _score_item(
                    q_ptr, bounds_ptr, table_ptr, held_ptr, scores_ptr, row, kind, width, table_stride,
                    held_stride, bounds_page_stride, bounds_half_stride, G, G_PAD, D, SCORE_SLOTS,
                    SCORE_BLOCK,
                )  # fmt: skip
                tl.debug_barrier()  # every thread's stores, then one release
                tl.atomic_add(sync_ptr + HEADER + 3 * row, 1, sem="release")
        elif kind == SCORE_ITEMS:
            row = stage - LAG_SELECT
            if (row >= 0) & (row < rows):
                _wait_until(sync_ptr + HEADER + 3 * row, SCORE_ITEMS)
                _select_item(
                    scores_ptr, count_ptr, table_ptr, newest_ptr, chosen_ptr, row, width, table_stride,
                    newest_stride, BLOCK, TAIL,
                )  # fmt: skip
                tl.debug_barrier()
                tl.atomic_add(sync_ptr + HEADER + 3 * row + 1, 1, sem="release")
        else:
            row = stage - LAG_SELECT - LAG_ATTEND
            if (row >= 0) & (row < rows):
                _wait_until(sync_ptr + HEADER + 3 * row + 1, 1)
                _attend_item(
                    q_ptr, k_ptr, v_ptr, count_ptr, last_ptr, chosen_ptr, partial_out_ptr, partial_lse_ptr,
                    row, kind - SCORE_ITEMS - 1, width, scale_log2, G, G_PAD, D, S, ITEMS, BLOCK_PAGES,
                    STAGES, UPCAST,
                )  # fmt: skip
                tl.debug_barrier()
                finished = tl.atomic_add(sync_ptr + HEADER + 3 * row + 2, 1, sem="acq_rel")
                if finished == ITEMS - 1:  # the row's last item merges it
                    _merge_row(partial_out_ptr, partial_lse_ptr, out_ptr, row, G, D, ITEMS, DTYPE)
        item = tl.atomic_add(sync_ptr, 1, sem="relaxed")
    tl.debug_barrier()
    exited = tl.atomic_add(sync_ptr + 1, 1, sem="acq_rel")
    if exited == tl.num_programs(0) - 1:  # every other program is gone: zero for the next call
        for start in range(0, HEADER + 3 * rows, 1024):
            offsets = start + tl.arange(0, 1024)
            tl.store(sync_ptr + offsets, tl.zeros((1024,), tl.int32), mask=offsets < HEADER + 3 * rows)


def _check_inputs(
    q: torch.Tensor,
    key_bounds: torch.Tensor,
    table: torch.Tensor,
    held: torch.Tensor,
    count: torch.Tensor,
    newest: torch.Tensor,
    last_page_len: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    scratch: QuestChainScratch,
    shape: ChainShape,
) -> None:
    """Raise ``ValueError`` unless :func:`quest_chain`'s inputs have the shapes, strides and
    dtypes its docstring gives (what the kernel's address arithmetic assumes)."""
    rows, group, head_dim = q.shape
    width = scratch.scores.shape[1]
    page_size = k_pages.shape[2]
    if not (q.is_contiguous() and k_pages.is_contiguous() and v_pages.is_contiguous()):
        raise ValueError("quest_chain: q and the pages must be contiguous")
    if head_dim < 16 or head_dim & (head_dim - 1):
        raise ValueError(f"quest_chain: head_dim must be a power of two >= 16, got {head_dim}")
    if k_pages.shape[1] != 1 or k_pages.shape[3] != head_dim or v_pages.shape != k_pages.shape:
        raise ValueError(f"quest_chain: pages {tuple(k_pages.shape)} must be [P, 1, S, {head_dim}]")
    if key_bounds.dim() != 3 or key_bounds.shape[1:] != (2, head_dim) or key_bounds.stride(-1) != 1:
        raise ValueError(f"quest_chain: key_bounds {tuple(key_bounds.shape)} must be [P, 2, {head_dim}]")
    if k_pages.dtype != q.dtype or v_pages.dtype != q.dtype or q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"quest_chain: q and pages must share bf16 or fp16, got {q.dtype}, {k_pages.dtype}")
    if scratch.shape_for() != (rows, width, group, head_dim, shape.attend_items):
        raise ValueError(
            f"quest_chain: scratch is for (rows, width, group, head_dim, items) {scratch.shape_for()}, "
            f"not {(rows, width, group, head_dim, shape.attend_items)}"
        )
    if table.shape != (rows, width) or table.stride(1) != 1:
        raise ValueError(f"quest_chain: table {tuple(table.shape)} must be [{rows}, {width}], rows dense")
    if width > MAX_BLOCK:
        raise ValueError(f"quest_chain: {width} slots per row, at most {MAX_BLOCK}")
    per_row = {"held": held, "count": count, "newest": newest, "last_page_len": last_page_len}
    for name, tensor in per_row.items():
        if tensor.shape != (rows,):
            raise ValueError(f"quest_chain: {name} must be [{rows}], got {tuple(tensor.shape)}")
    if count.stride(0) != 1 or last_page_len.stride(0) != 1:
        raise ValueError("quest_chain: count and last_page_len must be contiguous")
    if shape.block_pages * page_size < 16:  # tl.dot's smallest tile on the GPU
        raise ValueError(
            f"quest_chain: 16 tokens per attention step at least, got {shape.block_pages * page_size}"
        )


def quest_chain(
    q: torch.Tensor,
    key_bounds: torch.Tensor,
    table: torch.Tensor,
    held: torch.Tensor,
    count: torch.Tensor,
    newest: torch.Tensor,
    last_page_len: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    scratch: QuestChainScratch,
    shape: ChainShape,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Quest's selection and attention of one decode layer in one launch (module docstring).

    - ``q: [rows, G, D]`` contiguous, bf16 or fp16 (post-RoPE; rows are (sequence, KV head));
    - ``key_bounds: [P, 2, D]`` (one layer: per page key min, key max; last dim contiguous);
    - ``table: [rows, width] int32`` page ids by slot (``width = scratch.scores.shape[1]``, at most
      :data:`~lil_sparse.kernels.radix_select.MAX_BLOCK`), rows contiguous;
    - ``held: [rows] int64`` pages each row holds, at most ``width`` (any stride); slots from
      ``held - 1`` are not scored (the newest page is attended last, whatever the scores);
    - ``count: [rows] int64`` contiguous: older pages to take, at most ``held - 1``;
      ``newest: [rows] int32`` (any stride) the newest page's id;
    - ``last_page_len: [rows] int32`` contiguous: tokens in the newest page;
    - ``k_pages, v_pages: [P, 1, S, D]`` (one layer, contiguous) in q's dtype, ``D`` a power of two
      of at least 16; ``scratch`` from :meth:`QuestChainScratch.allocate` for these rows, width,
      group and ``shape.attend_items``.

    Writes and returns ``out: [rows, G, D]`` in q's dtype: for each row, attention (scale
    ``1/sqrt(D)``) over the ``count`` best older pages by Quest's bound and the newest page, as
    ``quest_scores`` + ``select_pages`` + ``paged_decode`` compute it. No host sync; the grid
    depends only on ``shape`` (CUDA-graph safe). Raises ``ValueError`` on any mismatched shape,
    stride or dtype above (:func:`_check_inputs`); the values ``held`` and ``count`` hold are
    not checked (that would need a host sync).
    """
    rows, group, head_dim = q.shape
    width = scratch.scores.shape[1]
    _check_inputs(q, key_bounds, table, held, count, newest, last_page_len, k_pages, v_pages, scratch, shape)
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous()):
        raise ValueError(f"quest_chain: out must be a contiguous {tuple(q.shape)} {q.dtype} tensor")
    out = torch.empty_like(q) if out is None else out
    if rows == 0:
        return out
    block, tail, _ = block_layout(width)
    score_items = -(-width // SCORE_SLOTS)
    page_size = k_pages.shape[2]
    _QUEST_CHAIN(
        (shape.programs,),
        q, key_bounds, table, held, count, newest, last_page_len, k_pages, v_pages,
        scratch.scores, scratch.chosen, scratch.partial_out, scratch.partial_lse, out, scratch.sync,
        rows, width, table.stride(0), held.stride(0), newest.stride(0), key_bounds.stride(0),
        key_bounds.stride(1), LOG2E / math.sqrt(head_dim),
        G=group, G_PAD=max(16, triton.next_power_of_2(group)), D=head_dim, S=page_size,
        SCORE_ITEMS=score_items, SCORE_SLOTS=SCORE_SLOTS, SCORE_BLOCK=shape.score_block,
        ITEMS=shape.attend_items, BLOCK_PAGES=shape.block_pages, STAGES=shape.stages, HEADER=SYNC_HEADER,
        LAG_SELECT=shape.lag_select,
        LAG_ATTEND=shape.lag_attend, BLOCK=block, TAIL=tail, UPCAST=not q.is_cuda,
        DTYPE=TL_DTYPES[q.dtype], PDL=use_pdl(q), num_warps=shape.warps, **launch_options(q),
    )  # fmt: skip
    return out


# Direct launches once a specialization is known (lil_sparse/kernels/launcher.py).
_QUEST_CHAIN = KernelLauncher(_quest_chain)
