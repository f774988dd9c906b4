"""Radix select of a row's top keys in registers: the building blocks of
:mod:`lil_sparse.kernels.page_select`'s one-program-per-row top-k.

1. **Ranking scores.** The row's score is the sum of ``share`` consecutive score rows (InfLLM
   ranks a sequence's blocks once for all its KV heads), with the sink and recent windows forced
   to ``+inf`` when asked, and ``-inf`` from slot ``held - 1`` on (the newest page is added last).
2. **Threshold by radix select.** Scores map to 32-bit keys with the same order (the float's
   bits, sign flipped; negative values get their magnitude bits flipped too), and up to four
   passes over 8-bit digits, most significant first, each a 256-bin histogram of the keys that
   still match the digits chosen so far, find ``T``, the ``count``-th largest key. This is the
   radix select of FlashInfer's top-k and PyTorch's ``gatherTopK``, with the row in registers: up
   to ``MAX_BLOCK`` slots as a power-of-two main block plus a power-of-two tail block
   (:func:`block_layout`: 2304 slots are 2048 + 256, not a padded 4096), the histogram being the
   sum of the two blocks'. Wider rows reload their ``MAX_BLOCK``-slot blocks in every pass.
   **Early exit:** once a pass leaves a prefix whose bin holds exactly the ``remaining`` keys
   still wanted, every key matching it is taken and no later pass can change the set, so the
   search stops there, with ``T`` one below the prefix's lowest key and no ties wanted. Random
   fp32 scores settle after three passes, sometimes two; a row taking every slot above ``-inf``
   usually after one. The passes are a ``while`` loop on a scalar of the program (no host sync,
   the same launch); without the exit all four run.
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_BLOCK = 4096  # slots a program holds at once (16 KiB of fp32 scores); wider rows loop


def block_layout(width: int) -> tuple[int, int, int]:
    """``(BLOCK, TAIL, NUM_BLOCKS)`` for rows of ``width`` slots.

    Up to ``MAX_BLOCK`` slots the row stays in registers as a main block of ``BLOCK`` slots (the
    largest power of two ``<= width``) and, when that leaves slots over, a tail block of ``TAIL``
    (the next power of two of the rest): 2304 = 2048 + 256 instead of one 4096-slot block. Both
    are at least 16 slots and together never more than the one padded block they replace. Wider
    rows are ``NUM_BLOCKS`` blocks of ``MAX_BLOCK`` slots, reloaded for every pass (``TAIL = 0``).
    """
    if width > MAX_BLOCK:
        return MAX_BLOCK, 0, triton.cdiv(width, MAX_BLOCK)
    block = max(16, 1 << (max(width, 1).bit_length() - 1))
    tail = max(16, triton.next_power_of_2(width - block)) if width > block else 0
    return block, tail, 1


@triton.jit
def ranking_keys(
    row_scores,
    stride,
    slots,
    width,
    held,
    sink,
    recent,
    SHARE: tl.constexpr,
    WINDOWS: tl.constexpr,
    CACHE: tl.constexpr,
):
    """Unsigned order-preserving keys (int64 in [0, 2^32)) of the row's ranking scores at ``slots``
    (the sum of the ``SHARE`` score rows from ``row_scores``, ``stride`` apart); slots outside the
    row get key -1 (below every key). ``CACHE``: the loads' cache modifier (``".cg"`` for scores
    another program of the same kernel wrote, :mod:`lil_sparse.kernels.quest_chain`; else "")."""
    inside = slots < width
    score = tl.load(row_scores + slots, mask=inside, other=0.0, cache_modifier=CACHE)
    for part in range(1, SHARE):  # not from zero: 0.0 + -0.0 would lose the sign of a lone row
        score += tl.load(row_scores + part * stride + slots, mask=inside, other=0.0, cache_modifier=CACHE)
    if WINDOWS:
        score = tl.where((slots < sink) | (slots >= held - recent), float("inf"), score)
        score = tl.where(slots >= held - 1, float("-inf"), score)
    bits = score.to(tl.int32, bitcast=True)
    signed = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # float order as signed ints
    return tl.where(inside, signed.to(tl.int64) + 2147483648, -1)


@triton.jit
def block_keys(
    resident, block, row_scores, stride, width, held, sink, recent, SHARE, WINDOWS, BLOCK, NUM_BLOCKS
):
    """Keys of main block ``block``: the resident row when it is one block, else reloaded."""
    keys = resident
    if NUM_BLOCKS > 1:
        slots = block * BLOCK + tl.arange(0, BLOCK)
        keys = ranking_keys(row_scores, stride, slots, width, held, sink, recent, SHARE, WINDOWS, "")
    return keys


@triton.jit
def digit_histogram(keys, prefix, shift):
    """256-bin histogram of the keys' 8-bit digit at ``shift``, over the keys (not -1) whose
    higher digits equal ``prefix``'s."""
    matching = (keys >= 0) & ((keys >> (shift + 8)) == (prefix >> (shift + 8)))
    return tl.histogram(((keys >> shift) & 255).to(tl.int32), 256, mask=matching)


@triton.jit
def radix_pass(
    resident, tail, prefix, remaining, shift, row_scores, stride, width, held, sink, recent,
    SHARE, WINDOWS, BLOCK, TAIL, NUM_BLOCKS, EARLY_EXIT,
):  # fmt: skip
    """One radix pass over the row (its blocks, then the tail): the digit at ``shift`` of the
    ``remaining``-th largest key among those matching ``prefix``. Returns the prefix with that
    digit, the keys of the digit's bin still wanted, and whether a later pass can change the set:
    always ``True`` without ``EARLY_EXIT``, else ``False`` once the bin holds exactly those keys."""
    bins = tl.arange(0, 256)
    histogram = tl.zeros((256,), tl.int32)
    for block in range(NUM_BLOCKS):
        keys = block_keys(
            resident, block, row_scores, stride, width, held, sink, recent, SHARE, WINDOWS, BLOCK, NUM_BLOCKS
        )
        histogram += digit_histogram(keys, prefix, shift)
    if TAIL > 0:
        histogram += digit_histogram(tail, prefix, shift)
    at_least = tl.sum(histogram, axis=0) - tl.cumsum(histogram, axis=0) + histogram
    searching = tl.full((), True, tl.int1)
    if EARLY_EXIT:
        # One reduction gives the digit and whether its bin is exact: the largest bin with
        # at_least >= remaining wins whatever the low bit, and at_least[d] == remaining before
        # the pass is histogram[d] == remaining after it.
        exact = (at_least == remaining).to(tl.int32)
        pick = tl.max(tl.where(at_least >= remaining, bins * 2 + exact, 0), axis=0)
        digit_chosen = pick >> 1
        searching = (pick & 1) == 0
    else:
        digit_chosen = tl.max(tl.where(at_least >= remaining, bins, 0), axis=0)
    remaining -= tl.sum(tl.where(bins > digit_chosen, histogram, 0), axis=0).to(tl.int64)
    return prefix | (digit_chosen.to(tl.int64) << shift), remaining, searching


@triton.jit
def settled_threshold(
    resident, tail, count, row_scores, stride, width, held, sink, recent,
    SHARE, WINDOWS, BLOCK, TAIL, NUM_BLOCKS,
):  # fmt: skip
    """``(T, ties_wanted)`` for the row's ``count`` largest keys by radix passes with the early
    exit (module docstring): every key ``> T`` is taken, then the first ``ties_wanted`` keys ``==
    T`` in slot order (:func:`write_taken`)."""
    prefix = tl.zeros((), tl.int64)
    remaining = count
    searching = tl.full((), True, tl.int1)  # False once the prefix's bin is exactly what is left
    shift = 24
    while searching & (shift >= 0):
        prefix, remaining, searching = radix_pass(
            resident, tail, prefix, remaining, shift, row_scores, stride, width, held,
            sink, recent, SHARE, WINDOWS, BLOCK, TAIL, NUM_BLOCKS, True,
        )  # fmt: skip
        shift -= 8
    # Stopped early: every key matching the prefix is taken, so T sits just below the prefix's
    # lowest key (its lower digits are still zero; T = -1 for prefix 0 still leaves out the -1
    # keys of slots outside the row) and no ties are wanted.
    return tl.where(searching, prefix, prefix - 1), tl.where(searching, remaining, 0)


@triton.jit
def write_taken(keys, slots, threshold, ties_wanted, written, ties_seen, pages_ptr, out_ptr):
    """Write the pages of the block's keys ``> threshold`` and of its ties while the row's tie
    rank (``ties_seen`` before the block) is below ``ties_wanted``, in slot order after the
    ``written`` pages before them. Returns the new ``(written, ties_seen)``."""
    tie = keys == threshold
    tie_rank = ties_seen + tl.cumsum(tie.to(tl.int64), axis=0) - 1
    take = (keys > threshold) | (tie & (tie_rank < ties_wanted))
    place = written + tl.cumsum(take.to(tl.int64), axis=0) - 1
    tl.store(out_ptr + place, tl.load(pages_ptr + slots, mask=take, other=0), mask=take)
    return written + tl.sum(take.to(tl.int64), axis=0), ties_seen + tl.sum(tie.to(tl.int64), axis=0)
