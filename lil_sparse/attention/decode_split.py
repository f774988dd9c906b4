"""Where to split a decode batch of very unequal rows into two FlashInfer calls.

FlashInfer's tensor-core decode (its batch-prefill kernel with one query per row) splits every
row's pages into chunks of **one** size for the whole batch. Under CUDA graphs it chooses the
smallest chunk that keeps the work units (row chunks) within ``2 * num_sms / num_kv_heads``
(FlashInfer 0.6.6, ``include/flashinfer/attention/scheduler.cuh``: ``PrefillPlan`` sets
``max_batch_size_if_split``, ``PrefillBinarySearchKVChunkSize`` searches the chunk). Our rows are
(sequence, KV head) pairs with ``num_kv_heads=1``, so 132 SMs give 264 units. A mixed batch of
48 rows of 2049 pages beside 192 rows of 257 cannot split its long rows at all (240 rows already
take 240 units; in the engine the 30 sequences pad to 32, 256 rows): 48 CTAs each stream 16.8 MB
while the rest of the GPU idles.

Measured on the H200 (2026-11-30 15:23 UTC, ``bench/split_micro.py``, printed output; FlashInfer
0.6.6, bf16, head_dim 128, page 16, group 4, replayed in a CUDA graph): those 240 rows took 504.6
us in one call and 319.4 us in two (long rows, then short rows); the bytes need 286 us. The two
calls now run at once (:mod:`lil_sparse.attention.flashinfer_decode_slot`): 299.4 us against
317.3 us one after the other at 17:32 (docs/bench/split_micro.md). The cost model below prices
the serial calls.

The model used here (in page units, so it holds for any page size and dtype): a unit streams at
``1 / (2 num_sms)`` of the bandwidth while the GPU is full, and a lone unit at up to
``1 / num_sms`` of it, so a call of ``u`` units costs

    max(total_pages * 2 / min(u, 2 num_sms), largest_unit_pages) + CALL_OVERHEAD_PAGES

(a page unit is a page's K and V read at ``1 / num_sms`` of the bandwidth: 8 KiB at 32 GB/s, 0.26
us). Against the same measurements it is 4-18% pessimistic for one call and for the split at the
drop, and it ranks one call against that split right in every layout measured: one call 529 us
predicted (504.6 measured), the split 351 (319.4); 192 rows of 257 pages alone, which leave a
quarter of the units idle, 137 (116.0), where a split would cost more (132 measured). Among split
points it is less reliable: splits inside the run of long rows (rows 32 and 40) it rates 10-13%
better than the drop, and they measured 5% worse and 2% better (with 16 one-page rows added: rated
7-9% better, measured 16% and 3% worse); an earlier variant that also split where the 264 units fill
up, and ran up to three calls, measured no gain (15:21 UTC, printed, code not kept: 341.2 and 328.3
against 325.6 us). So only the drops are candidates, and the split is taken only when it saves at
least ``MIN_GAIN`` of the single call's estimate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

UNITS_PER_SM = 2  # FlashInfer's PrefillPlan: num_blocks_per_sm = 2 (max_batch_size_if_split)
CALL_OVERHEAD_PAGES = 20  # ~5 us of launch and tail per call, in page units (8 KiB at 32 GB/s)
MIN_GAIN = 0.2  # split only when the estimate drops by at least 20%
MAX_CANDIDATES = 3  # split points tried: the largest drops (ratio) in page count between neighbours


def chunk_pages(counts: Sequence[int], units: int, min_chunk: int) -> int:
    """FlashInfer's chunk size in pages for rows of ``counts`` pages with ``units`` work units.

    The smallest ``c`` in ``[min_chunk, max(counts)]`` with ``sum(ceil(n / c)) <= units``
    (``PrefillBinarySearchKVChunkSize``, one query tile per row; ``max(counts)`` when none fits,
    and ``min_chunk`` when every row is shorter than it, as FlashInfer's search returns).
    ``min_chunk`` is FlashInfer's ``max(128 // page_size, 1)``.
    """
    rows = Counter(max(n, 1) for n in counts).items()  # a batch holds few distinct counts
    longest = max(n for n, _ in rows)
    low, high = min_chunk, longest
    while low < high:
        mid = (low + high) // 2
        if sum(times * -(-n // mid) for n, times in rows) > units:
            low = mid + 1
        else:
            high = mid
    return low


def call_cost(counts: Sequence[int], num_sms: int, min_chunk: int) -> float:
    """Estimated time of one decode call over rows of ``counts`` pages, in page units (see the
    module docstring): ``max(sum * 2 / min(units, 2 num_sms), largest unit) + CALL_OVERHEAD_PAGES``."""
    capacity = UNITS_PER_SM * num_sms
    chunk = chunk_pages(counts, capacity, min_chunk)
    units = sum(-(-max(n, 1) // chunk) for n in counts)
    largest = min(chunk, max(counts))
    return max(sum(counts) * UNITS_PER_SM / min(units, capacity), largest) + CALL_OVERHEAD_PAGES


def choose_split(counts: Sequence[int], row_step: int, num_sms: int, min_chunk: int) -> int:
    """Rows in the first of two decode calls over rows of ``counts`` pages, or 0 for one call.

    ``row_step``: split points fall on multiples of it (a sequence's KV-head rows stay in one
    call). Candidates are the ``MAX_CANDIDATES`` largest drops (by ratio) in page count between
    neighbouring sequences (the runner orders rows by the pages a sparse layer attends, longest
    first, so there the long rows form a prefix; in Quest's dense layers they may not, which costs
    speed only); the best one is taken when it beats one call by ``MIN_GAIN``. A split inside a
    run of equal rows is never tried, though the model can rate one a little better.
    Raises ``ValueError`` when ``counts`` is empty or not a multiple of ``row_step`` long.
    """
    rows = len(counts)
    if rows == 0 or row_step < 1 or rows % row_step:
        raise ValueError(f"choose_split: {rows} rows in steps of {row_step}")
    firsts = counts[::row_step]
    drops = sorted(
        (firsts[i - 1] / max(firsts[i], 1), i * row_step)
        for i in range(1, len(firsts))
        if firsts[i - 1] > firsts[i]
    )
    if not drops:
        return 0
    chunk = chunk_pages(counts, UNITS_PER_SM * num_sms, min_chunk)
    if min(chunk, max(counts)) <= sum(counts) / num_sms:
        return 0  # one call already streams at the full bandwidth
    single = call_cost(counts, num_sms, min_chunk)
    best, best_cost = 0, single * (1 - MIN_GAIN)
    for _, split in drops[-MAX_CANDIDATES:]:
        cost = call_cost(counts[:split], num_sms, min_chunk) + call_cost(counts[split:], num_sms, min_chunk)
        if cost < best_cost:
            best, best_cost = split, cost
    return best
