"""Per-page selection scores in one kernel per layer (Quest and InfLLM), without a gather copy.

One program scores ``BLOCK_W`` slots of one row (one sequence x KV head). It loads the row's
queries ``[G, D]`` once, reduces them over the group, then reads each slot's page metadata
straight from the cache by page id and writes one fp32 score per slot. The PyTorch references
gather ``[rows, width, 2, D]`` (Quest) or ``[rows, width, D]`` (InfLLM) first; here the gathered
metadata never exists in memory.

Quest (mit-han-lab/Quest, ``estimate`` kernel): a page's bound for query ``q`` is
``sum_d max(q_d * min_d, q_d * max_d)``; since ``min_d <= max_d`` this is
``max(q_d, 0) * max_d + min(q_d, 0) * min_d``, so the sum over the group's queries is
``(sum_g max(q, 0)) . max + (sum_g min(q, 0)) . min``: two D-vectors per row, one dot per page.
InfLLM: ``(sum_g q) . key_mean[page]`` per (sequence, KV head) row; the sum over a
sequence's KV heads and its sink/recent windows are applied where the scores are read, by the
selection kernel (:func:`lil_sparse.kernels.page_select.select_pages`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.launcher import KernelLauncher
from lil_sparse.kernels.pdl import launch_options, use_pdl, wait_for_previous

BLOCK_W = 32  # slots per program below 1024 slots (64 from there on): 32 x 2 x 128 bf16 = 16 KiB


@triton.jit
def _page_scores(
    q_ptr,  # [rows, G, D], any float dtype
    meta_ptr,  # quest: [P, 2, D] bounds; infllm: [P, D] key means
    table_ptr,  # [rows, W] int32 page ids
    held_ptr,  # [rows] int64 (stride held_stride): slots >= held - 1 score -inf
    out_ptr,  # [rows, W] float32
    width,
    q_row_stride,
    q_group_stride,
    table_stride,
    held_stride,
    meta_page_stride,
    meta_half_stride,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    BOUNDS: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
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
    limit = tl.load(held_ptr + row * held_stride) - 1  # the newest page is added by the caller
    valid = (slots < limit) & (slots < width)
    pages = tl.load(table_ptr + row * table_stride + slots, mask=valid, other=0).to(tl.int64)
    base = meta_ptr + pages[:, None] * meta_page_stride + dims[None, :]  # [BLOCK, D]
    if BOUNDS:
        q_pos = tl.sum(tl.maximum(q, 0.0), axis=0)  # [D]
        q_neg = tl.sum(tl.minimum(q, 0.0), axis=0)
        key_min = tl.load(base, mask=valid[:, None], other=0.0).to(tl.float32)
        key_max = tl.load(base + meta_half_stride, mask=valid[:, None], other=0.0).to(tl.float32)
        score = tl.sum(key_min * q_neg[None, :] + key_max * q_pos[None, :], axis=1)
    else:
        q_sum = tl.sum(q, axis=0)
        key_mean = tl.load(base, mask=valid[:, None], other=0.0).to(tl.float32)
        score = tl.sum(key_mean * q_sum[None, :], axis=1)
    score = tl.where(valid, score, float("-inf"))
    tl.store(out_ptr + row * width + slots, score, mask=slots < width)


def _launch(
    q: torch.Tensor,
    meta: torch.Tensor,
    table: torch.Tensor,
    held: torch.Tensor,
    bounds: bool,
    block: int = 0,
    num_warps: int = 8,
) -> torch.Tensor:
    """Launch :func:`_page_scores` with ``block`` slots per program (0: 64 from 1024 slots, else
    32). Measured on the H200 (``bench/select_micro.py --scores``, 2026-11-30): 64 rows x 2048
    slots of bf16 bounds took 20.0 us at 64 slots / 8 warps, 29.1 us at 32 / 4 (16.0 us is the
    bandwidth floor); 2 rows x 256 slots 2.2 us at 32 / 8."""
    rows, group, head_dim = q.shape
    width = table.shape[1]
    if q.stride(2) != 1 or table.stride(1) != 1 or meta.stride(-1) != 1:
        raise ValueError("q, table and the metadata must be contiguous in their last dimension")
    out = torch.empty(rows, width, dtype=torch.float32, device=q.device)
    if rows == 0 or width == 0:
        return out
    block = block or (64 if width >= 1024 else BLOCK_W)
    grid = (rows, triton.cdiv(width, block))
    _PAGE_SCORES(
        grid,
        q,
        meta,
        table,
        held,
        out,
        width,
        q.stride(0),
        q.stride(1),
        table.stride(0),
        held.stride(0),  # a policy batch's columns are strided views: read in place
        meta.stride(0),
        meta.stride(1) if bounds else 0,
        GROUP=group,
        BLOCK_G=triton.next_power_of_2(group),
        HEAD_DIM=head_dim,
        BLOCK=block,
        BOUNDS=bounds,
        PDL=use_pdl(q),
        num_warps=num_warps,
        **launch_options(q),
    )
    return out


def quest_scores(
    q: torch.Tensor, key_bounds: torch.Tensor, table: torch.Tensor, held: torch.Tensor
) -> torch.Tensor:
    """Quest upper bounds summed over the group, ``-inf`` from slot ``held[r] - 1`` on (the
    newest page is added by the caller).

    ``q: [rows, G, D]``; ``key_bounds: [P, 2, D]`` (one layer: per page key min, key max);
    ``table: [rows, W] int32`` page ids; ``held: [rows] int64`` pages each row holds (any
    stride: read in place, no copy). Returns ``[rows, W] float32``.
    Reference: :func:`lil_sparse.policies.quest.quest_page_scores` over the gathered bounds.
    """
    return _launch(q, key_bounds, table, held, bounds=True)


def infllm_scores(
    q: torch.Tensor, key_mean: torch.Tensor, table: torch.Tensor, held: torch.Tensor
) -> torch.Tensor:
    """InfLLM block scores ``(sum_g q_g) . key_mean[page]``, ``-inf`` from slot ``held[r] - 1`` on.

    ``q: [rows, G, D]``; ``key_mean: [P, D]`` (one layer, any float dtype: the cache's);
    ``table: [rows, W] int32``; ``held: [rows] int64`` (any stride). Returns ``[rows, W] float32``.
    Reference: :func:`lil_sparse.policies.infllm.infllm_row_scores` over the gathered key means.
    """
    return _launch(q, key_mean, table, held, bounds=False)


# Direct launches once a specialization is known (lil_sparse/kernels/launcher.py).
_PAGE_SCORES = KernelLauncher(_page_scores)
