"""H2O's per-page attention mass from the attention kernel's log-sum-exp, in one pass over K.

The reference (:func:`lil_sparse.attention.reference.paged_page_probs`) gathers every attended
key into an fp32 copy, recomputes the scores, takes a softmax and sums it per page. With the
row's log-sum-exp from the attention kernel the softmax needs no second pass: the probability of
token ``t`` for query ``g`` is ``exp(s_gt - lse_g)``. One program reads ``BLOCK_PAGES`` of one
row's attended pages of one layer straight from the paged cache (bf16), scores them against the
row's queries, turns the scores into probabilities with the given ``lse`` and sums each page's
mass over the group. A row's pages are distinct and rows never share pages (one-head pages belong
to one sequence and head), so no two programs of a layer write one page and no atomics are needed.

Two entry points:

- :func:`add_page_mass`: one layer, added into ``attention_mass`` in place (one launch).
- :func:`add_page_mass_layers`: every layer of a decode step at once, for a step whose rows
  attend the same pages in every layer (H2O's: it evicts, it does not select per layer). One
  launch scores all (row, page block, layer) programs into a ``[layers, rows, width]`` partial,
  a second sums it over the layers in order and adds it (two launches per step instead of one
  per layer: in a CUDA graph each launch of a latency-bound pass costs microseconds however
  little it reads). Deterministic: no float atomics.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.launcher import KernelLauncher

BLOCK_PAGES = 4  # pages per program: 4 x 16 tokens x 128 dims bf16 = 16 KiB of keys
SUM_BLOCK = 128  # page slots per program of the sum over layers


@triton.jit
def _page_mass(
    q_ptr,  # [L, rows, G, D]
    k_ptr,  # [L, P, 1, S, D] key pages, each layer contiguous
    page_ids_ptr,  # [rows, W] int32: padded, the newest page at counts[r] - 1
    counts_ptr,  # [rows] int32 pages attended per row
    last_len_ptr,  # [rows] int32 tokens in the newest page
    lse_ptr,  # [L, rows, G] float32 log2(sum_t exp(s_gt))
    out_ptr,  # ACCUMULATE: [P] float32 mass, updated in place; else [L, rows, W] float32
    rows,
    width,
    q_layer_stride,
    q_row_stride,
    q_group_stride,
    k_layer_stride,
    ids_stride,
    lse_layer_stride,
    lse_row_stride,
    scale_log2,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK: tl.constexpr,
    UPCAST: tl.constexpr,
    ACCUMULATE: tl.constexpr,
):
    row = tl.program_id(0)
    block = tl.program_id(1)
    layer = tl.program_id(2).to(tl.int64)
    count = tl.load(counts_ptr + row)
    # Rows attend fewer pages than the step's width (an H2O row holds its budget beside 32k-token
    # rows of other policies): programs past the row's pages do nothing.
    if block * BLOCK < count:
        dims = tl.arange(0, HEAD_DIM)
        heads = tl.arange(0, BLOCK_G)
        q = tl.load(
            q_ptr
            + layer * q_layer_stride
            + row * q_row_stride
            + heads[:, None] * q_group_stride
            + dims[None, :],
            mask=heads[:, None] < GROUP,
            other=0.0,
        )  # [BLOCK_G, D], the cache dtype: products are exact in the fp32 accumulator
        lse = tl.load(
            lse_ptr + layer * lse_layer_stride + row * lse_row_stride + heads,
            mask=heads < GROUP,
            other=float("inf"),
        )
        last_len = tl.load(last_len_ptr + row)
        tokens = tl.arange(0, BLOCK * PAGE_SIZE)
        slot = block * BLOCK + tokens // PAGE_SIZE  # [T]
        offset = tokens % PAGE_SIZE
        valid = (slot < count) & (slot < width) & ((slot < count - 1) | (offset < last_len))
        page = tl.load(page_ids_ptr + row * ids_stride + slot, mask=valid, other=0).to(tl.int64)
        keys = tl.load(
            k_ptr + layer * k_layer_stride + (page * PAGE_SIZE + offset)[:, None] * HEAD_DIM + dims[None, :],
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
        if ACCUMULATE:
            pages = tl.load(page_ids_ptr + row * ids_stride + slots, mask=used, other=0).to(tl.int64)
            current = tl.load(out_ptr + pages, mask=used, other=0.0)
            tl.store(out_ptr + pages, current + page_mass, mask=used)
        else:
            tl.store(out_ptr + (layer * rows + row) * width + slots, page_mass, mask=used)


@triton.jit
def _sum_layers(
    partial_ptr,  # [L, rows, W] float32 from _page_mass
    page_ids_ptr,  # [rows, W] int32
    counts_ptr,  # [rows] int32
    mass_ptr,  # [P] float32, updated in place
    rows,
    width,
    ids_stride,
    NUM_LAYERS: tl.constexpr,  # a constant: Triton's CPU interpreter cannot range over an argument
    BLOCK: tl.constexpr,
):
    """One program per (row, block of page slots): the slots' mass summed over the layers in
    order, added to their pages."""
    row = tl.program_id(0)
    slots = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    used = (slots < tl.load(counts_ptr + row)) & (slots < width)
    total = tl.zeros((BLOCK,), tl.float32)
    for layer in range(NUM_LAYERS):
        total += tl.load(partial_ptr + (layer * rows + row) * width + slots, mask=used, other=0.0)
    pages = tl.load(page_ids_ptr + row * ids_stride + slots, mask=used, other=0).to(tl.int64)
    current = tl.load(mass_ptr + pages, mask=used, other=0.0)
    tl.store(mass_ptr + pages, current + total, mask=used)


def _check(q: torch.Tensor, k_pages: torch.Tensor, page_ids: torch.Tensor) -> None:
    if not k_pages.is_contiguous() or page_ids.stride(1) != 1 or q.stride(-1) != 1:
        raise ValueError("k_pages must be contiguous; q and page_ids contiguous in their last dimension")
    if q.dtype != k_pages.dtype:
        raise ValueError(f"q ({q.dtype}) and k_pages ({k_pages.dtype}) must share a dtype")


def _launch(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    page_ids: torch.Tensor,
    counts: torch.Tensor,
    last_page_len: torch.Tensor,
    lse_log2: torch.Tensor,
    out: torch.Tensor,
    accumulate: bool,
) -> None:
    """``_page_mass`` over ``q: [L, rows, G, D]``, ``k_pages: [L, P, 1, S, D]`` and ``lse_log2:
    [L, rows, G]``: into ``out`` (mass ``[P]`` when ``accumulate``, else a ``[L, rows, W]``
    partial)."""
    layers, rows, group, head_dim = q.shape
    width = page_ids.shape[1]
    lse = lse_log2.float().contiguous()
    grid = (rows, triton.cdiv(width, BLOCK_PAGES), layers)
    _PAGE_MASS(
        grid,
        q,
        k_pages,
        page_ids,
        counts.contiguous(),
        last_page_len.contiguous(),
        lse,
        out,
        rows,
        width,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k_pages.stride(0),
        page_ids.stride(0),
        lse.stride(0),
        lse.stride(1),
        math.log2(math.e) / math.sqrt(head_dim),
        GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        PAGE_SIZE=k_pages.shape[3],
        BLOCK=BLOCK_PAGES,
        UPCAST=not q.is_cuda,
        ACCUMULATE=accumulate,
    )


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
    Reference: ``attention_mass.index_add_(0, page_ids, paged_page_probs(...))``. Raises
    ValueError for non-contiguous pages or mismatched dtypes.
    """
    _check(q, k_pages, page_ids)
    if q.shape[0] == 0:
        return
    _launch(
        q.unsqueeze(0), k_pages.unsqueeze(0), page_ids, counts, last_page_len, lse_log2.unsqueeze(0),
        attention_mass, accumulate=True,
    )  # fmt: skip


def add_page_mass_layers(
    q_layers: torch.Tensor,
    k_layers: torch.Tensor,
    page_ids: torch.Tensor,
    counts: torch.Tensor,
    last_page_len: torch.Tensor,
    lse_layers: torch.Tensor,
    attention_mass: torch.Tensor,
) -> None:
    """Every layer's page mass of one decode step, summed over the layers, added in place.

    ``q_layers: [L, rows, G, D]``; ``k_layers: [L, P, 1, S, D]`` (every layer of the cache);
    ``lse_layers: [L, rows, G] float32`` (base 2, as in :func:`add_page_mass`); ``page_ids``,
    ``counts``, ``last_page_len`` and ``attention_mass`` as there, the same pages in every layer.
    Equals ``add_page_mass`` layer by layer up to fp32 rounding (the layers are summed first,
    in order, then added). Two launches. Raises ValueError as :func:`add_page_mass`, or when the
    layer counts differ.
    """
    _check(q_layers, k_layers, page_ids)
    layers, rows = q_layers.shape[:2]
    if k_layers.shape[0] != layers or lse_layers.shape[0] != layers:
        raise ValueError(
            f"q ({layers}), k ({k_layers.shape[0]}) and lse ({lse_layers.shape[0]}) "
            "must have one entry per layer"
        )
    if rows == 0 or layers == 0:
        return
    width = page_ids.shape[1]
    partial = torch.empty(layers, rows, width, dtype=torch.float32, device=q_layers.device)
    _launch(q_layers, k_layers, page_ids, counts, last_page_len, lse_layers, partial, accumulate=False)
    _SUM_LAYERS(
        (rows, triton.cdiv(width, SUM_BLOCK)),
        partial, page_ids, counts.contiguous(), attention_mass, rows, width, page_ids.stride(0),
        NUM_LAYERS=layers, BLOCK=SUM_BLOCK,
    )  # fmt: skip


# Direct launches once a specialization is known (lil_sparse/kernels/launcher.py).
_PAGE_MASS = KernelLauncher(_page_mass)
_SUM_LAYERS = KernelLauncher(_sum_layers)
