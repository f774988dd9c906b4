"""Paged decode attention for few rows: split-KV partials, then their merge (two launches).

A decode row is one (sequence, KV head) pair with ``G`` query heads over one-head pages, as in
:mod:`lil_sparse.attention.flashinfer_backend`. With few rows (batch 1 has one row per KV head)
the attention reads little: at the 1.5B shape and 4k tokens, 2 rows of 256 pages are 4 MiB of K
and V, about 1 us of HBM time. FlashInfer's planned decode spends 7.2 us in its split-KV kernel
and 3.0 us in the merge of the partial results (H200 profile of the batch-1 step,
``docs/bench/profile_qwen1.5b_4096_1_full0.txt``, 2026-11-30): latency, not bytes.

Here a grid of ``(rows, splits)`` programs each attends one contiguous run of a row's pages (the
flash-decoding split of Dao et al., 2023) with the online softmax of FlashAttention and stores
its normalised partial output and base-2 log-sum-exp; a second kernel, one program per (row,
query head, block of dims: :func:`merge_block_d`), merges the splits. No host work and no plan:
the grids depend only on the row count and the tiles, so a captured CUDA graph replays them for
any page counts, reading
``indptr``/``indices``/``last_page_len`` on the device. Merging inside the first kernel (the last
program of a row to arrive, counted by an atomic) took 11.2-11.6 us against 6.5 for the same
kernel without the merge (H200, 2026-11-30, ad hoc variants, printed output): one program reading
every split's partial is slower than a second launch. Nor does loading a split's first loop step
of pages before the PDL wait (page ids and K/V are written before the step's graph, but for the
newest token, reloaded after the wait): the 1.5B batch-1 4k dense step took 1.27 ms with it
against 1.22 without, three rounds alternately (H200, 2026-12-01 about 03:15 UTC, ad hoc
variant, ``bench/decode_e2e.py``, printed output).

Numerics: scores ``q . k`` in fp32 (exact products of the bf16 inputs) scaled by
``log2(e) / sqrt(D)``; the probabilities stay fp32 for the ``P V`` product, which runs in tf32
(FlashInfer's tensor-core decode rounds them to the model dtype instead); the output is rounded
once. The reference is :meth:`lil_sparse.attention.reference.ReferenceBackend.decode` (fp32
softmax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.fused_layers import TL_DTYPES
from lil_sparse.kernels.launcher import KernelLauncher
from lil_sparse.kernels.pdl import launch_options, use_pdl, wait_for_previous

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class DecodeTiles:
    """Launch shape: ``splits`` programs per row, ``block_pages`` pages per loop step, ``warps``
    per program and Triton's ``num_stages``. ``pipelined``: walk a split's pages in a
    ``tl.range`` loop that Triton software-pipelines on the GPU, ``stages`` loop steps in flight
    (for splits of several loop steps); else in a ``while`` loop, which it does not pipeline (for
    one loop step per split: there the pipelined loop made the 1.5B batch-1 4k step 20-33 us
    slower, docs/bench/paged_decode_pipelining.md). Positive powers of two, ``stages`` any
    positive int."""

    splits: int
    block_pages: int
    warps: int = 4
    stages: int = 2
    pipelined: bool = False

    def __post_init__(self) -> None:
        for name in ("splits", "block_pages", "warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"DecodeTiles.{name} must be a positive power of two, got {value}")
        if self.stages < 1:
            raise ValueError(f"DecodeTiles.stages must be positive, got {self.stages}")


@dataclass
class PagedDecodeScratch:
    """Per-slot buffers of :func:`paged_decode`: ``partial_out: [rows, splits, G, D] float32``
    and ``partial_lse: [rows, splits, G] float32``."""

    partial_out: torch.Tensor
    partial_lse: torch.Tensor

    @classmethod
    def allocate(
        cls, rows: int, group: int, head_dim: int, splits: int, device: torch.device
    ) -> PagedDecodeScratch:
        return cls(
            torch.empty(rows, splits, group, head_dim, dtype=torch.float32, device=device),
            torch.empty(rows, splits, group, dtype=torch.float32, device=device),
        )


@triton.jit
def _attend_block(
    q, k_ptr, v_ptr, indices_ptr, first, page0, end, pages, last_len, tokens, dims,
    scale_log2, m, denom, acc, S: tl.constexpr, D: tl.constexpr, UPCAST: tl.constexpr,
    CACHE: tl.constexpr,
):  # fmt: skip
    """One loop step of :func:`_paged_decode`: the ``BLOCK_PAGES`` pages from ``page0`` (of the
    row's ``pages``, the split's ending at ``end``) folded into the online softmax state ``(m,
    denom, acc)``, which it returns. ``CACHE``: the page ids' cache modifier (``".cg"`` where
    another program of the same kernel wrote them, :mod:`lil_sparse.kernels.quest_chain`)."""
    page = page0 + tokens // S
    slot_in_page = tokens % S
    valid = (page < end) & ((page < pages - 1) | (slot_in_page < last_len))
    page_id = tl.load(indices_ptr + first + page, mask=page < end, other=0, cache_modifier=CACHE)
    offsets = (page_id.to(tl.int64) * S + slot_in_page)[:, None] * D + dims[None, :]
    k = tl.load(k_ptr + offsets, mask=valid[:, None], other=0.0)
    v = tl.load(v_ptr + offsets, mask=valid[:, None], other=0.0)  # in flight with k
    if UPCAST:  # Triton's CPU interpreter has no bf16 matmul (as in page_mass)
        k = k.to(tl.float32)
    scores = tl.dot(q, tl.trans(k)) * scale_log2  # [G_PAD, T] fp32, base-2 logits
    scores = tl.where(valid[None, :], scores, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, axis=1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(scores - m_new[:, None])
    denom = denom * alpha + tl.sum(p, axis=1)
    # P stays fp32 and V widens to it: a tf32 product, 8x finer than rounding P to bf16 as
    # FlashInfer does (its kernel time was not measured apart from the report's steps).
    acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32))
    return m_new, denom, acc


@triton.jit
def attend_split(
    q_ptr, k_ptr, v_ptr, indices_ptr, first, pages, last_len, begin, end, row, base, scale_log2,
    partial_out_ptr, partial_lse_ptr, G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr,
    S: tl.constexpr, BLOCK_PAGES: tl.constexpr, STAGES: tl.constexpr, PIPELINED: tl.constexpr,
    UPCAST: tl.constexpr, CACHE: tl.constexpr,
):  # fmt: skip
    """Row ``row``'s pages ``begin .. end`` of its ``pages`` (page ids at ``indices_ptr + first``,
    loaded with cache modifier ``CACHE``) with the online softmax, stored as partial ``base``'s
    normalised ``[G, D]`` output and base-2 log-sum-exp: the body of :func:`_paged_decode`'s
    programs and of :mod:`lil_sparse.kernels.quest_chain`'s attention items."""
    heads = tl.arange(0, G_PAD)
    dims = tl.arange(0, D)
    head_mask = heads < G
    q = tl.load(q_ptr + (row * G + heads[:, None]) * D + dims[None, :], mask=head_mask[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m = tl.full((G_PAD,), float("-inf"), tl.float32)
    denom = tl.zeros((G_PAD,), tl.float32)
    acc = tl.zeros((G_PAD, D), tl.float32)
    tokens = tl.arange(0, BLOCK_PAGES * S)
    if PIPELINED:
        for page0 in tl.range(begin, end, BLOCK_PAGES, num_stages=STAGES):
            m, denom, acc = _attend_block(
                q, k_ptr, v_ptr, indices_ptr, first, page0, end, pages, last_len, tokens, dims,
                scale_log2, m, denom, acc, S, D, UPCAST, CACHE,
            )  # fmt: skip
    else:
        # A while loop (Triton does not pipeline it): one loop step per split, the common case.
        page0 = begin
        while page0 < end:
            m, denom, acc = _attend_block(
                q, k_ptr, v_ptr, indices_ptr, first, page0, end, pages, last_len, tokens, dims,
                scale_log2, m, denom, acc, S, D, UPCAST, CACHE,
            )  # fmt: skip
            page0 += BLOCK_PAGES

    # An empty split (more splits than pages) stores output 0 and lse -inf: weight 0 in the merge.
    # Empty by its page range, not by denom == 0: a NaN key (a page poisoned after it was freed,
    # KVCache.poison_pages) makes denom NaN and must reach the output as NaN, as in the reference.
    empty = begin >= end
    denom = tl.where(empty, 1.0, denom)  # an empty split's acc is 0: output 0, no 0 / 0
    partial = acc / denom[:, None]
    partial_lse = tl.where(empty, float("-inf"), m + tl.log2(denom))
    tl.store(
        partial_out_ptr + (base * G + heads[:, None]) * D + dims[None, :], partial, mask=head_mask[:, None]
    )
    tl.store(partial_lse_ptr + base * G + heads, partial_lse, mask=head_mask)


@triton.jit
def _paged_decode(
    q_ptr,  # [rows, G, D] contiguous
    k_ptr,  # [P, 1, S, D] contiguous: page p's token t at (p * S + t) * D
    v_ptr,
    indptr_ptr,  # [rows + 1] int32: row r's pages are indices[indptr[r]:indptr[r + 1]]
    indices_ptr,  # int32 page ids
    last_ptr,  # [rows] int32: tokens in the row's last page (1..S)
    partial_out_ptr,  # [rows, SPLITS, G, D] float32
    partial_lse_ptr,  # [rows, SPLITS, G] float32
    scale_log2,  # log2(e) / sqrt(D)
    G: tl.constexpr,
    G_PAD: tl.constexpr,
    D: tl.constexpr,
    S: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK_PAGES: tl.constexpr,
    STAGES: tl.constexpr,
    PIPELINED: tl.constexpr,
    UPCAST: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program per (row, split): the split's pages with the online softmax, stored as its
    normalised ``[G, D]`` partial output and base-2 log-sum-exp."""
    wait_for_previous(PDL)
    row = tl.program_id(0)
    split = tl.program_id(1)
    first = tl.load(indptr_ptr + row)
    pages = tl.load(indptr_ptr + row + 1) - first
    last_len = tl.load(last_ptr + row)
    per_split = tl.cdiv(pages, SPLITS)
    begin = split * per_split
    end = tl.minimum(begin + per_split, pages)

    attend_split(
        q_ptr, k_ptr, v_ptr, indices_ptr, first, pages, last_len, begin, end, row, row * SPLITS + split,
        scale_log2, partial_out_ptr, partial_lse_ptr, G, G_PAD, D, S, BLOCK_PAGES, STAGES, PIPELINED,
        UPCAST, "",
    )  # fmt: skip


@triton.jit
def _merge_partials(
    partial_out_ptr,  # [rows, SPLITS, G, D] float32
    partial_lse_ptr,  # [rows, SPLITS, G] float32
    out_ptr,  # [rows, G, D]
    lse_ptr,  # [rows, G] float32, or unused
    G: tl.constexpr,
    D: tl.constexpr,
    SPLITS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WRITE_LSE: tl.constexpr,
    DTYPE: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program per (row, query head, ``BLOCK_D`` dims): the log-sum-exp-weighted mean of the
    splits' partials over those dims."""
    wait_for_previous(PDL)
    row = tl.program_id(0)
    head = tl.program_id(1)
    dims = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    splits = tl.arange(0, SPLITS)
    lses = tl.load(partial_lse_ptr + (row * SPLITS + splits) * G + head)  # [SPLITS]
    parts = tl.load(partial_out_ptr + ((row * SPLITS + splits[:, None]) * G + head) * D + dims[None, :])
    top = tl.max(lses, axis=0)  # -inf only for a row of no pages (every split empty)
    top = tl.where(top == float("-inf"), 0.0, top)  # else exp2(-inf - -inf) would be NaN
    weights = tl.exp2(lses - top)  # empty splits: exp2(-inf) = 0
    total = tl.sum(weights, axis=0)
    merged = tl.sum(weights[:, None] * parts, axis=0) / tl.where(total > 0.0, total, 1.0)
    tl.store(out_ptr + (row * G + head) * D + dims, merged.to(DTYPE))
    if WRITE_LSE and tl.program_id(2) == 0:  # an empty row: log2(0) = -inf
        tl.store(lse_ptr + row * G + head, top + tl.log2(total))


MERGE_FLOATS = 4096
"""Partial-output floats one merge program reads at most (16 KiB): ``BLOCK_D = MERGE_FLOATS //
splits`` dims (at least 16, at most ``D``), so 128 splits of a 128-dim head take 4 programs.
Measured only against one program per head (H200, 2026-12-01 09:58, docs/bench/paged_decode_micro.md:
6.5 against 7.0 us at 2 rows x 256 pages, 128 splits); other block widths were not swept."""


def merge_block_d(splits: int, head_dim: int) -> int:
    """Dims per merge program for ``splits`` partials of ``head_dim`` (:data:`MERGE_FLOATS`)."""
    return min(head_dim, max(16, MERGE_FLOATS // splits))


def paged_decode(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    last_page_len: torch.Tensor,
    scratch: PagedDecodeScratch,
    tiles: DecodeTiles,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    merge_dims: int = 0,
) -> torch.Tensor:
    """Decode attention of ``q: [rows, G, D]`` over each row's pages (two launches).

    ``k_pages, v_pages: [P, 1, S, D]`` (one layer, contiguous) in q's dtype (bf16 or fp16);
    ``indptr: [rows + 1]``, ``indices``, ``last_page_len: [rows]`` int32 on q's device, in
    FlashInfer's paged-KV CSR: row ``r`` attends pages ``indices[indptr[r]:indptr[r + 1]]``, all
    ``S`` tokens of each but the last, of which ``last_page_len[r]`` (a row of no pages gets
    output 0 and lse ``-inf``; a NaN key makes its row NaN, as in the reference). ``scratch``
    from :meth:`PagedDecodeScratch.allocate` with ``tiles.splits``.
    Writes and returns ``out: [rows, G, D]`` (allocated when None) and, when given,
    ``lse: [rows, G] float32``, the base-2 log-sum-exp of the scaled scores (FlashInfer's
    ``return_lse`` convention). Scale ``1 / sqrt(D)``. ``merge_dims``: dims per merge program, a
    power of two dividing ``D`` (0: :func:`merge_block_d`; for A/B timing). Raises ValueError on
    mismatched shapes or dtypes, non-contiguous tensors, a dtype other than bf16 and fp16, or a
    ``merge_dims`` that does not divide ``D``.
    """
    rows, group, head_dim = q.shape
    page_size = k_pages.shape[2]
    if k_pages.shape[1] != 1 or k_pages.shape[3] != head_dim or v_pages.shape != k_pages.shape:
        raise ValueError(f"paged_decode: pages {tuple(k_pages.shape)} must be [P, 1, S, {head_dim}]")
    if not (q.is_contiguous() and k_pages.is_contiguous() and v_pages.is_contiguous()):
        raise ValueError("paged_decode: q and the pages must be contiguous")
    if scratch.partial_out.shape != (rows, tiles.splits, group, head_dim):
        raise ValueError(
            f"paged_decode: scratch {tuple(scratch.partial_out.shape)} is not for "
            f"{(rows, tiles.splits, group, head_dim)}"
        )
    if q.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"paged_decode: q must be bfloat16 or float16 (FlashInfer's dtypes), not {q.dtype}")
    if k_pages.dtype != q.dtype or v_pages.dtype != q.dtype:
        raise ValueError(f"paged_decode: the pages ({k_pages.dtype}, {v_pages.dtype}) must be q's {q.dtype}")
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous()):
        raise ValueError(f"paged_decode: out must be a contiguous {tuple(q.shape)} {q.dtype} tensor")
    if lse is not None and (
        lse.shape != (rows, group) or lse.dtype != torch.float32 or not lse.is_contiguous()
    ):
        raise ValueError(f"paged_decode: lse must be a contiguous float32 {(rows, group)} tensor")
    if head_dim & (head_dim - 1) or head_dim < 16:
        raise ValueError(f"paged_decode: head_dim must be a power of two >= 16, got {head_dim}")
    if merge_dims and (merge_dims & (merge_dims - 1) or head_dim % merge_dims):
        raise ValueError(f"paged_decode: merge_dims {merge_dims} must be a power of two dividing {head_dim}")
    out = torch.empty_like(q) if out is None else out
    if rows == 0:
        return out
    _PAGED_DECODE(
        (rows, tiles.splits),
        q,
        k_pages,
        v_pages,
        indptr,
        indices,
        last_page_len,
        scratch.partial_out,
        scratch.partial_lse,
        LOG2E / math.sqrt(head_dim),
        G=group,
        G_PAD=max(16, triton.next_power_of_2(group)),
        D=head_dim,
        S=page_size,
        SPLITS=tiles.splits,
        BLOCK_PAGES=tiles.block_pages,
        STAGES=tiles.stages,
        PIPELINED=tiles.pipelined,
        UPCAST=not q.is_cuda,
        PDL=use_pdl(q),
        num_warps=tiles.warps,
        num_stages=tiles.stages,
        **launch_options(q),
    )
    block_d = merge_dims or merge_block_d(tiles.splits, head_dim)
    _MERGE_PARTIALS(
        (rows, group, head_dim // block_d),
        scratch.partial_out, scratch.partial_lse, out, scratch.partial_lse if lse is None else lse,
        G=group, D=head_dim, SPLITS=tiles.splits, BLOCK_D=block_d, WRITE_LSE=lse is not None,
        DTYPE=TL_DTYPES[q.dtype], PDL=use_pdl(q), **launch_options(q),
    )  # fmt: skip
    return out


# Direct launches once a specialization is known (lil_sparse/kernels/launcher.py).
_PAGED_DECODE = KernelLauncher(_paged_decode)
_MERGE_PARTIALS = KernelLauncher(_merge_partials)
