"""H2O's per-page attention mass from the attention kernel's log-sum-exp, in one pass over K.

The reference (:func:`lil_sparse.attention.reference.paged_page_probs`) gathers every attended
key into an fp32 copy, recomputes the scores, takes a softmax and sums it per page. With the
row's log-sum-exp from the attention kernel the softmax needs no second pass: the probability of
token ``t`` for query ``g`` is ``exp(s_gt - lse_g)``. One program reads ``BLOCK_PAGES`` of one
row's attended pages straight from the paged cache (bf16), scores them against the row's
queries, turns the scores into probabilities with the given ``lse`` and adds each page's
mass (summed over the group) into ``attention_mass`` in place. A row's pages are distinct and
rows never share pages (one-head pages belong to one sequence and head), so no two programs
write one page and no atomics are needed.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK_PAGES = 4  # pages per program: 4 x 16 tokens x 128 dims bf16 = 16 KiB of keys


@triton.jit
def _page_mass(
    q_ptr,  # [rows, G, D]
    k_ptr,  # [P, 1, S, D] one layer's key pages, contiguous
    page_ids_ptr,  # [rows, W] int32: padded, the newest page at counts[r] - 1
    counts_ptr,  # [rows] int32 pages attended per row
    last_len_ptr,  # [rows] int32 tokens in the newest page
    lse_ptr,  # [rows, G] float32 log2(sum_t exp(s_gt))
    mass_ptr,  # [P] float32, updated in place
    width,
    q_row_stride,
    q_group_stride,
    ids_stride,
    lse_row_stride,
    scale_log2,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK: tl.constexpr,
    UPCAST: tl.constexpr,
):
    row = tl.program_id(0)
    block = tl.program_id(1)
    count = tl.load(counts_ptr + row)
    # Rows attend fewer pages than the step's width (an H2O row holds its budget beside 32k-token
    # rows of other policies): programs past the row's pages do nothing.
    if block * BLOCK < count:
        dims = tl.arange(0, HEAD_DIM)
        heads = tl.arange(0, BLOCK_G)
        q = tl.load(
            q_ptr + row * q_row_stride + heads[:, None] * q_group_stride + dims[None, :],
            mask=heads[:, None] < GROUP,
            other=0.0,
        )  # [BLOCK_G, D], the cache dtype: products are exact in the fp32 accumulator
        lse = tl.load(lse_ptr + row * lse_row_stride + heads, mask=heads < GROUP, other=float("inf"))
        last_len = tl.load(last_len_ptr + row)
        tokens = tl.arange(0, BLOCK * PAGE_SIZE)
        slot = block * BLOCK + tokens // PAGE_SIZE  # [T]
        offset = tokens % PAGE_SIZE
        valid = (slot < count) & (slot < width) & ((slot < count - 1) | (offset < last_len))
        page = tl.load(page_ids_ptr + row * ids_stride + slot, mask=valid, other=0).to(tl.int64)
        keys = tl.load(
            k_ptr + (page * PAGE_SIZE + offset)[:, None] * HEAD_DIM + dims[None, :],
            mask=valid[:, None],
            other=0.0,
        )  # [T, D]
        if UPCAST:  # Triton's CPU interpreter has no bf16 matmul
            q = q.to(tl.float32)
            keys = keys.to(tl.float32)
        scores = tl.dot(q, tl.trans(keys))  # [BLOCK_G, T] float32
        probs = tl.exp2(scores * scale_log2 - lse[:, None])
        probs = tl.where(valid[None, :] & (heads[:, None] < GROUP), probs, 0.0)
        token_mass = tl.sum(probs, axis=0)  # [T]
        page_mass = tl.sum(tl.reshape(token_mass, (BLOCK, PAGE_SIZE)), axis=1)  # [BLOCK]
        slots = block * BLOCK + tl.arange(0, BLOCK)
        used = (slots < count) & (slots < width)
        pages = tl.load(page_ids_ptr + row * ids_stride + slots, mask=used, other=0).to(tl.int64)
        current = tl.load(mass_ptr + pages, mask=used, other=0.0)
        tl.store(mass_ptr + pages, current + page_mass, mask=used)


def add_page_mass(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    page_ids: torch.Tensor,
    counts: torch.Tensor,
    last_page_len: torch.Tensor,
    lse_log2: torch.Tensor,
    attention_mass: torch.Tensor,
) -> None:
    """Add each attended page's probability mass, summed over the row's queries, in place.

    ``q: [rows, G, D]``; ``k_pages: [P, 1, S, D]`` (one layer); ``page_ids: [rows, W] int32``
    with row ``r``'s ``counts[r]`` pages first, the newest last; ``counts, last_page_len: [rows]
    int32``; ``lse_log2: [rows, G] float32``, ``log2 sum_t exp(q . k_t / sqrt(D))`` over the same
    tokens (FlashInfer's ``return_lse`` convention); ``attention_mass: [P] float32``.
    Reference: ``attention_mass.index_add_(0, page_ids, paged_page_probs(...))``.
    """
    rows, group, head_dim = q.shape
    width = page_ids.shape[1]
    page_size = k_pages.shape[2]
    if not k_pages.is_contiguous() or page_ids.stride(1) != 1 or q.stride(2) != 1:
        raise ValueError("k_pages must be contiguous; q and page_ids contiguous in their last dimension")
    if q.dtype != k_pages.dtype:
        raise ValueError(f"q ({q.dtype}) and k_pages ({k_pages.dtype}) must share a dtype")
    if rows == 0:
        return
    lse = lse_log2.float().contiguous()
    counts, last_page_len = counts.contiguous(), last_page_len.contiguous()
    grid = (rows, triton.cdiv(width, BLOCK_PAGES))
    _page_mass[grid](
        q,
        k_pages,
        page_ids,
        counts,
        last_page_len,
        lse,
        attention_mass,
        width,
        q.stride(0),
        q.stride(1),
        page_ids.stride(0),
        group,
        math.log2(math.e) / math.sqrt(head_dim),
        GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        PAGE_SIZE=page_size,
        BLOCK=BLOCK_PAGES,
        UPCAST=not q.is_cuda,
    )
