"""Top-k page selection written straight into the attention kernel's page list: one kernel per layer.

After a policy scored every slot of its rows (``lil_sparse.kernels.page_scores``), the engine
needs, per row, the page ids of the ``count`` best older slots followed by the row's newest page,
in the CSR page list (``indices`` at ``indptr[row]``) that FlashInfer's planned decode reads. The
PyTorch path does that in about eight launches per layer (``torch.topk``, its sort, a gather, a
concatenation, a scatter for the newest page, a copy into the step's page table and the CSR
repack); here it is one program per row:

1. **Threshold.** Scores map to int32 keys with the same order (the float's bits, with the
   magnitude bits of negative values flipped; -inf and +inf are ordinary keys). A 32-step
   bisection over the key range finds ``T``, the ``count``-th largest key: the largest ``t``
   with at least ``count`` keys ``>= t``. This is radix select as FlashInfer's ``top_k`` and
   PyTorch's ``gatherTopK`` do it, one bit per pass, with the row in registers.
2. **Compaction.** Keys ``> T`` are taken, and keys ``== T`` in slot order until ``count`` are
   taken (ties go to the older slot). A prefix sum gives each taken slot its place, so the pages
   come out in slot order (oldest first) and the newest page is written last, where
   ``last_page_len`` applies.

The selected *set* equals ``torch.topk``'s for distinct scores; among equal scores ``topk``'s
choice is unspecified and this kernel's is the older slot. The reference is
:func:`lil_sparse.policies.base.top_slots` followed by the gather in
:meth:`lil_sparse.engine.step_attention.DecodeAttention._select`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 4096  # slots a program holds at once (16 KiB of fp32 scores); wider rows loop


@triton.jit
def _key(scores):
    """fp32 -> int32 with the same order (IEEE bits; negative values get their magnitude flipped)."""
    bits = scores.to(tl.int32, bitcast=True)
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def _select_pages(
    scores_ptr,  # [rows // SHARE, width] float32
    count_ptr,  # [rows] int64: older pages to take
    table_ptr,  # [rows, >= width] int32: slot -> page id
    newest_ptr,  # [rows] int32 (stride newest_stride): the row's newest page, written last
    out_row_ptr,  # [rows] int64: the row's index in the CSR list (unused when IDENTITY)
    indptr_ptr,  # [all_rows + 1] int32
    indices_ptr,  # [capacity] int32: written
    width,
    scores_stride,
    table_stride,
    newest_stride,
    SHARE: tl.constexpr,
    IDENTITY: tl.constexpr,
    BLOCK: tl.constexpr,
    NUM_BLOCKS: tl.constexpr,
):
    row = tl.program_id(0)
    count = tl.load(count_ptr + row)
    score_row = scores_ptr + (row // SHARE) * scores_stride
    if IDENTITY:  # noqa: SIM108 (a constexpr branch: Triton compiles one side)
        start = tl.load(indptr_ptr + row)
    else:
        start = tl.load(indptr_ptr + tl.load(out_row_ptr + row))
    offsets = tl.arange(0, BLOCK)
    # 1. The count-th largest key: the largest t with #(key >= t) >= count (bisection, int64).
    low = tl.full((), -2147483648, tl.int64)
    high = tl.full((), 2147483647, tl.int64)
    if NUM_BLOCKS == 1:  # the row stays in registers for all 32 passes
        resident = _key(tl.load(score_row + offsets, mask=offsets < width, other=float("-inf")))
        resident = tl.where(offsets < width, resident.to(tl.int64), -4294967296)  # below every key
        for _ in range(32):
            mid = low + (high - low + 1) // 2
            enough = tl.sum((resident >= mid).to(tl.int64), axis=0) >= count
            low = tl.where(enough, mid, low)
            high = tl.where(enough, high, mid - 1)
    else:
        for _ in range(32):
            mid = low + (high - low + 1) // 2
            above = tl.zeros((), tl.int64)
            for block in range(NUM_BLOCKS):
                slots = block * BLOCK + offsets
                keys = _key(tl.load(score_row + slots, mask=slots < width, other=float("-inf")))
                above += tl.sum(((keys.to(tl.int64) >= mid) & (slots < width)).to(tl.int64), axis=0)
            enough = above >= count
            low = tl.where(enough, mid, low)
            high = tl.where(enough, high, mid - 1)
    threshold = low
    greater = tl.zeros((), tl.int64)
    for block in range(NUM_BLOCKS):
        slots = block * BLOCK + offsets
        keys = _key(tl.load(score_row + slots, mask=slots < width, other=float("-inf")))
        greater += tl.sum(((keys.to(tl.int64) > threshold) & (slots < width)).to(tl.int64), axis=0)
    ties_wanted = count - greater
    # 2. Compaction in slot order: every key above T, then ties at T, oldest first.
    written = tl.zeros((), tl.int64)
    ties_seen = tl.zeros((), tl.int64)
    for block in range(NUM_BLOCKS):
        slots = block * BLOCK + offsets
        inside = slots < width
        keys = _key(tl.load(score_row + slots, mask=inside, other=float("-inf"))).to(tl.int64)
        tie = (keys == threshold) & inside
        tie_rank = ties_seen + tl.cumsum(tie.to(tl.int64), axis=0) - 1
        take = ((keys > threshold) & inside) | (tie & (tie_rank < ties_wanted))
        place = written + tl.cumsum(take.to(tl.int64), axis=0) - 1
        pages = tl.load(table_ptr + row * table_stride + slots, mask=take, other=0)
        tl.store(indices_ptr + start + place, pages, mask=take)
        written += tl.sum(take.to(tl.int64), axis=0)
        ties_seen += tl.sum(tie.to(tl.int64), axis=0)
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
) -> None:
    """Write each row's ``count`` best older pages, then its newest page, into a CSR page list.

    - ``scores: [rows // share, width] float32``: row ``r`` reads score row ``r // share`` (InfLLM
      scores a whole sequence once for its ``share`` KV-head rows). Slots that must be kept score
      ``+inf``; slots that must not be chosen (the newest page, padding) ``-inf``.
    - ``count: [rows] int64``: older pages to take, at most the row's slots scoring above ``-inf``.
    - ``table: [rows, >= width] int32``: each row's page ids by slot; ``newest: [rows]`` (any
      stride) int32 page ids.
    - ``out_rows: [rows] int64`` or ``None``: the row of ``indptr`` each row writes at (``None``:
      row ``r`` writes at ``indptr[r]``).
    - ``indptr: [R + 1] int32`` and ``indices: [capacity] int32``: the planned decode's page list;
      row ``r`` writes ``indices[indptr[o] : indptr[o] + count[r] + 1]`` (``o = out_rows[r]``), and
      the plan must give it exactly ``count[r] + 1`` pages.

    No host sync; the launch shape depends only on the tensors' shapes (CUDA-graph safe).
    Raises ``ValueError`` on mismatched shapes or a non-unit inner stride.
    """
    rows, width = table.shape[0], scores.shape[1]
    if rows == 0:
        return
    if scores.shape[0] * share != rows or count.shape != (rows,) or newest.shape[0] != rows:
        raise ValueError(
            f"select_pages: {rows} rows, scores {tuple(scores.shape)} (share {share}), "
            f"count {tuple(count.shape)}, newest {tuple(newest.shape)}"
        )
    if scores.stride(1) != 1 or table.stride(1) != 1 or table.shape[1] < width:
        raise ValueError("select_pages: scores and table must be contiguous rows, table at least as wide")
    if out_rows is not None and out_rows.shape != (rows,):
        raise ValueError(f"select_pages: out_rows must be [{rows}], got {tuple(out_rows.shape)}")
    block = min(MAX_BLOCK, triton.next_power_of_2(max(width, 16)))
    _select_pages[(rows,)](
        scores,
        count.contiguous(),
        table,
        newest,
        count if out_rows is None else out_rows.contiguous(),
        indptr,
        indices,
        width,
        scores.stride(0),
        table.stride(0),
        newest.stride(0),
        SHARE=share,
        IDENTITY=out_rows is None,
        BLOCK=block,
        NUM_BLOCKS=triton.cdiv(width, block),
        num_warps=8 if block >= 2048 else 4,
    )
