"""Per-page selection scores in one kernel per layer (Quest and InfLLM), without a gather copy.

Quest: one program scores ``BLOCK_W`` slots of one row (one sequence x KV head). It loads the
row's queries ``[G, D]`` once, reduces them over the group, then reads each slot's page metadata
straight from the cache by page id and writes one fp32 score per slot. InfLLM: one program
scores ``BLOCK_W`` slots of one *sequence*, summing over its KV heads' rows, and applies the
sink/recent windows and the ``-inf`` tail itself, so its scores go straight to top-k. The PyTorch references
gather ``[rows, width, 2, D]`` (Quest) or ``[rows, width, D]`` (InfLLM) first; here the gathered
metadata never exists in memory.

Quest (mit-han-lab/Quest, ``estimate`` kernel): a page's bound for query ``q`` is
``sum_d max(q_d * min_d, q_d * max_d)``; since ``min_d <= max_d`` this is
``max(q_d, 0) * max_d + min(q_d, 0) * min_d``, so the sum over the group's queries is
``(sum_g max(q, 0)) . max + (sum_g min(q, 0)) . min``: two D-vectors per row, one dot per page.
InfLLM: ``sum_h (sum_g q_hg) . key_sum[page_h] / page_size``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_W = 32  # slots per program: 32 pages x 2 x 128 bf16 = 16 KiB of bounds in flight


@triton.jit
def _quest_scores(
    q_ptr,  # [rows, G, D], any float dtype
    bounds_ptr,  # [P, 2, D]: per page key min, key max
    table_ptr,  # [rows, W] int32 page ids
    limit_ptr,  # [rows] int64: slots >= limit score -inf
    out_ptr,  # [rows, W] float32
    width,
    q_row_stride,
    q_group_stride,
    table_stride,
    page_stride,
    half_stride,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    block = tl.program_id(1)
    dims = tl.arange(0, HEAD_DIM)
    heads = tl.arange(0, BLOCK_G)
    q = tl.load(
        q_ptr + row * q_row_stride + heads[:, None] * q_group_stride + dims[None, :],
        mask=heads[:, None] < GROUP,
        other=0.0,
    ).to(tl.float32)  # [BLOCK_G, D]
    slots = block * BLOCK + tl.arange(0, BLOCK)
    limit = tl.load(limit_ptr + row)
    valid = (slots < limit) & (slots < width)
    pages = tl.load(table_ptr + row * table_stride + slots, mask=valid, other=0).to(tl.int64)
    base = bounds_ptr + pages[:, None] * page_stride + dims[None, :]  # [BLOCK, D]
    q_pos = tl.sum(tl.maximum(q, 0.0), axis=0)  # [D]
    q_neg = tl.sum(tl.minimum(q, 0.0), axis=0)
    key_min = tl.load(base, mask=valid[:, None], other=0.0).to(tl.float32)
    key_max = tl.load(base + half_stride, mask=valid[:, None], other=0.0).to(tl.float32)
    score = tl.sum(key_min * q_neg[None, :] + key_max * q_pos[None, :], axis=1)
    score = tl.where(valid, score, float("-inf"))
    tl.store(out_ptr + row * width + slots, score, mask=slots < width)


@triton.jit
def _infllm_sequence_scores(
    q_ptr,  # [seqs * HEADS, G, D]
    key_sum_ptr,  # [P, D] float32
    table_ptr,  # [seqs * HEADS, W] int32
    held_ptr,  # [seqs * HEADS] int64 (strided)
    sink_ptr,  # [seqs * HEADS] int64 (strided): leading slots kept
    recent_ptr,  # [seqs * HEADS] int64 (strided): trailing slots kept
    out_ptr,  # [seqs, W] float32
    width,
    q_row_stride,
    q_group_stride,
    table_stride,
    held_stride,
    sink_stride,
    recent_stride,
    scale,
    HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
):
    seq = tl.program_id(0)
    block = tl.program_id(1)
    dims = tl.arange(0, HEAD_DIM)
    heads = tl.arange(0, BLOCK_G)
    slots = block * BLOCK + tl.arange(0, BLOCK)
    first = seq * HEADS
    held = tl.load(held_ptr + first * held_stride)
    valid = (slots < held - 1) & (slots < width)
    score = tl.zeros((BLOCK,), tl.float32)
    for head in range(HEADS):
        row = first + head
        q = tl.load(
            q_ptr + row * q_row_stride + heads[:, None] * q_group_stride + dims[None, :],
            mask=heads[:, None] < GROUP,
            other=0.0,
        ).to(tl.float32)
        q_sum = tl.sum(q, axis=0)  # [D]
        pages = tl.load(table_ptr + row * table_stride + slots, mask=valid, other=0).to(tl.int64)
        meta = key_sum_ptr + pages[:, None] * HEAD_DIM + dims[None, :]
        key_sum = tl.load(meta, mask=valid[:, None], other=0.0)
        score += tl.sum(key_sum.to(tl.float32) * q_sum[None, :], axis=1)
    score = score * scale
    sink = tl.load(sink_ptr + first * sink_stride)
    recent = tl.load(recent_ptr + first * recent_stride)
    score = tl.where((slots < sink) | (slots >= held - recent), float("inf"), score)
    score = tl.where(valid, score, float("-inf"))
    tl.store(out_ptr + seq * width + slots, score, mask=slots < width)


def quest_scores(
    q: torch.Tensor, key_bounds: torch.Tensor, table: torch.Tensor, limit: torch.Tensor
) -> torch.Tensor:
    """Quest upper bounds summed over the group, ``-inf`` from slot ``limit[r]`` on.

    ``q: [rows, G, D]``; ``key_bounds: [P, 2, D]`` (one layer: per page key min, key max);
    ``table: [rows, W] int32`` page ids; ``limit: [rows] int64`` (any stride). Returns
    ``[rows, W] float32``. Raises ``ValueError`` when an inner dimension is not contiguous.
    Reference: :func:`lil_sparse.policies.quest.quest_page_scores` over the gathered bounds.
    """
    rows, group, head_dim = q.shape
    width = table.shape[1]
    if q.stride(2) != 1 or table.stride(1) != 1 or key_bounds.stride(-1) != 1:
        raise ValueError("q, table and the bounds must be contiguous in their last dimension")
    limit = limit.contiguous()  # a policy batch's columns are strided views
    out = torch.empty(rows, width, dtype=torch.float32, device=q.device)
    if rows == 0 or width == 0:
        return out
    _quest_scores[(rows, triton.cdiv(width, BLOCK_W))](
        q,
        key_bounds,
        table,
        limit,
        out,
        width,
        q.stride(0),
        q.stride(1),
        table.stride(0),
        key_bounds.stride(0),
        key_bounds.stride(1),
        GROUP=group,
        BLOCK_G=triton.next_power_of_2(group),
        HEAD_DIM=head_dim,
        BLOCK=BLOCK_W,
    )
    return out


def infllm_sequence_scores(
    q: torch.Tensor,
    key_sum: torch.Tensor,
    table: torch.Tensor,
    held: torch.Tensor,
    sink_pages: torch.Tensor,
    recent_pages: torch.Tensor,
    num_kv_heads: int,
    page_size: int,
) -> torch.Tensor:
    """InfLLM's per-sequence block scores, ready for top-k, in one kernel.

    ``q: [seqs * H, G, D]`` (``H = num_kv_heads`` rows per sequence, consecutive); ``key_sum:
    [P, D] float32`` (one layer); ``table: [seqs * H, W] int32``; ``held``, ``sink_pages``,
    ``recent_pages``: ``[seqs * H] int64`` (any stride; a sequence's rows share their values).
    Returns ``[seqs, W] float32``: ``sum_h (sum_g q_hg) . key_sum[page_h] / page_size``, ``+inf``
    for the ``sink_pages`` first and ``recent_pages`` last held slots, ``-inf`` from slot
    ``held - 1`` (the newest page, added by the caller) on.
    Reference: :func:`lil_sparse.policies.infllm.infllm_sequence_scores_reference`.
    """
    rows, group, head_dim = q.shape
    width = table.shape[1]
    if rows % num_kv_heads or q.stride(2) != 1 or table.stride(1) != 1 or not key_sum.is_contiguous():
        raise ValueError("infllm_sequence_scores: rows must be whole sequences, inputs contiguous inside")
    seqs = rows // num_kv_heads
    out = torch.empty(seqs, width, dtype=torch.float32, device=q.device)
    if seqs == 0 or width == 0:
        return out
    _infllm_sequence_scores[(seqs, triton.cdiv(width, BLOCK_W))](
        q,
        key_sum,
        table,
        held,
        sink_pages,
        recent_pages,
        out,
        width,
        q.stride(0),
        q.stride(1),
        table.stride(0),
        held.stride(0),
        sink_pages.stride(0),
        recent_pages.stride(0),
        1.0 / page_size,
        HEADS=num_kv_heads,
        GROUP=group,
        BLOCK_G=triton.next_power_of_2(group),
        HEAD_DIM=head_dim,
        BLOCK=BLOCK_W,
    )
    return out
