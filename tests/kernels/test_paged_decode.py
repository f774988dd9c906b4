"""The paged decode (:mod:`lil_sparse.kernels.paged_decode`: split-KV partials, then their merge,
two launches) against the reference decode.

The reference (:meth:`ReferenceBackend.decode`) takes an fp32 softmax; the kernel keeps the
probabilities in fp32 (a tf32 ``P V`` product on the GPU), so outputs agree to about two roundings
of the output dtype for values of order one. The base-2 log-sum-exp is
compared with the reference's fp32 one.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.attention.reference import ReferenceBackend, paged_scores
from lil_sparse.kernels.fast_decode import (
    PIPELINED_MIN_SPLITS,
    block_pages_options,
    choose_tiles,
    gpu_tested,
    runs_triton,
    step_tiles,
    step_tiles_options,
)
from lil_sparse.kernels.paged_decode import DecodeTiles, PagedDecodeScratch, merge_block_d, paged_decode

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}  # the output's rounding, twice


def make_case(counts, last, group, head_dim, page_size, dtype, seed, pool=64):
    """Random pages, ``q`` and a page table with each row's pages drawn from the pool."""
    gen = torch.Generator().manual_seed(seed)
    rows = len(counts)
    k_pages = torch.randn(pool, 1, page_size, head_dim, generator=gen).to(DEVICE, dtype)
    v_pages = torch.randn(pool, 1, page_size, head_dim, generator=gen).to(DEVICE, dtype)
    q = torch.randn(rows, group, head_dim, generator=gen).to(DEVICE, dtype)
    width = max(counts)
    page_ids = torch.zeros(rows, width, dtype=torch.int32)
    for row, count in enumerate(counts):
        page_ids[row, :count] = torch.randperm(pool, generator=gen)[:count].to(torch.int32)
    page_ids = page_ids.to(DEVICE)
    layout = DecodeLayout.build(
        list(counts), torch.tensor(last, dtype=torch.int32, device=DEVICE), tuple(last)
    )
    indices = page_ids.reshape(-1)[layout.flat_positions]
    return q, k_pages, v_pages, page_ids, layout, indices


def run(q, k_pages, v_pages, layout, indices, tiles, with_lse=True):
    rows, group, head_dim = q.shape
    scratch = PagedDecodeScratch.allocate(rows, group, head_dim, tiles.splits, q.device)
    lse = torch.empty(rows, group, dtype=torch.float32, device=q.device) if with_lse else None
    out = paged_decode(
        q, k_pages, v_pages, layout.indptr, indices, layout.last_page_len, scratch, tiles, lse=lse
    )
    return out, lse, scratch


def assert_matches_reference(case, tiles, dtype=torch.bfloat16):
    """:func:`paged_decode` of ``case`` (:func:`make_case`'s tuple) with ``tiles`` against the
    reference decode (within :data:`TOLERANCE`) and its fp32 base-2 log-sum-exp."""
    q, k_pages, v_pages, page_ids, layout, indices = case
    out, lse, _ = run(q, k_pages, v_pages, layout, indices, tiles)
    want = ReferenceBackend().decode(0, q, k_pages, v_pages, page_ids, layout)
    torch.testing.assert_close(out.float(), want.float(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    want_lse = torch.logsumexp(paged_scores(q, k_pages, page_ids, layout), dim=-1) / math.log(2)
    torch.testing.assert_close(lse, want_lse, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "counts, last",
    [
        ((1,), (1,)),  # one token
        ((3, 7), (16, 5)),  # pages fewer than splits in the first row
        ((9, 1, 20), (2, 16, 9)),  # unequal rows
        ((40,), (11,)),  # more pages than splits x block
    ],
)
@pytest.mark.parametrize(
    "tiles",
    [
        DecodeTiles(splits=4, block_pages=2),
        DecodeTiles(splits=1, block_pages=1),
        DecodeTiles(splits=8, block_pages=4),
        DecodeTiles(splits=4, block_pages=2, pipelined=True),  # the tl.range loop
        DecodeTiles(splits=1, block_pages=1, pipelined=True),
        DecodeTiles(splits=2, block_pages=2, stages=4, pipelined=True),  # four loop steps in flight
    ],
    ids=["4x2", "1x1", "8x4", "4x2p", "1x1p", "2x2s4p"],
)
@pytest.mark.parametrize("group", [6, 4])
def test_matches_reference(dtype, counts, last, tiles, group):
    assert_matches_reference(make_case(counts, last, group, 64, 16, dtype, seed=len(counts)), tiles, dtype)


@pytest.mark.parametrize(
    "page_size, head_dim, group, counts, last",
    [
        (1, 64, 1, (130, 5), (1, 1)),  # 128 one-token pages per loop step
        (4, 128, 8, (9, 3), (4, 2)),
        (64, 64, 4, (3, 2), (64, 17)),  # the largest page size EngineConfig takes
        (16, 256, 2, (20, 1), (3, 16)),  # FlashInfer's largest head_dim (SUPPORTED_HEAD_DIMS)
    ],
)
def test_matches_reference_at_engine_page_sizes_and_head_dims(page_size, head_dim, group, counts, last):
    """The tiles the backend chooses (:func:`choose_tiles` for 2 rows of an H200's 132 SMs, 128
    tokens per loop step) at page sizes and head dims the engine runs besides 16 and 64."""
    case = make_case(counts, last, group, head_dim, page_size, torch.bfloat16, seed=page_size, pool=160)
    assert_matches_reference(case, choose_tiles(len(counts), 132, page_size))


def test_repeated_launches_reuse_scratch():
    """A second launch over the same scratch (a graph replay) computes the new queries' attention."""
    q, k_pages, v_pages, page_ids, layout, indices = make_case(
        (5, 12), (3, 16), 6, 64, 16, torch.bfloat16, seed=3
    )
    tiles = DecodeTiles(splits=4, block_pages=2)
    scratch = PagedDecodeScratch.allocate(2, 6, 64, tiles.splits, q.device)
    first = paged_decode(q, k_pages, v_pages, layout.indptr, indices, layout.last_page_len, scratch, tiles)
    q2 = torch.flip(q, dims=[1]).contiguous()
    second = paged_decode(q2, k_pages, v_pages, layout.indptr, indices, layout.last_page_len, scratch, tiles)
    reference = ReferenceBackend()
    for got, query in ((first, q), (second, q2)):
        want = reference.decode(0, query, k_pages, v_pages, page_ids, layout)
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_row_of_no_pages_gives_zero_and_minus_infinity():
    """Every split of an empty row is empty: the merge writes output 0 and lse -inf (not the NaN
    of ``exp2(-inf - -inf)``), and the other rows are untouched by it."""
    q, k_pages, v_pages, page_ids, layout, indices = make_case((5,), (9,), 4, 64, 16, torch.bfloat16, seed=9)
    empty_first = torch.cat([torch.zeros(1, dtype=torch.int32, device=q.device), layout.indptr])
    q2 = torch.cat([q, q])
    tiles = DecodeTiles(splits=4, block_pages=2)
    scratch = PagedDecodeScratch.allocate(2, 4, 64, tiles.splits, q.device)
    lse = torch.empty(2, 4, dtype=torch.float32, device=q.device)
    last = torch.cat([layout.last_page_len[:1], layout.last_page_len])
    out = paged_decode(q2, k_pages, v_pages, empty_first, indices, last, scratch, tiles, lse=lse)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(lse[0], torch.full_like(lse[0], float("-inf")))
    want = ReferenceBackend().decode(0, q, k_pages, v_pages, page_ids, layout)
    torch.testing.assert_close(out[1:].float(), want.float(), atol=2e-2, rtol=2e-2)
    want_lse = torch.logsumexp(paged_scores(q, k_pages, page_ids, layout), dim=-1) / math.log(2)
    torch.testing.assert_close(lse[1:], want_lse, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(
    "tiles",
    [
        DecodeTiles(splits=4, block_pages=2),
        DecodeTiles(splits=1, block_pages=1),
        DecodeTiles(splits=4, block_pages=2, pipelined=True),
    ],
    ids=["4x2", "1x1", "4x2p"],
)
def test_a_nan_key_reaches_the_output(tiles):
    """A key poisoned to NaN (``KVCache.poison_pages``: a read of a freed page) makes its row's
    output and lse NaN, as in the reference softmax, whichever split reads it; other rows keep
    their values. (A split must not pass for empty because its softmax sum is NaN.)"""
    q, k_pages, v_pages, page_ids, layout, indices = make_case(
        (20, 6), (7, 16), 4, 64, 16, torch.bfloat16, seed=11
    )
    row_one = set(page_ids[1, :6].tolist())
    position = next(p for p in range(10, 15) if page_ids[0, p].item() not in row_one)
    k_pages[page_ids[0, position], 0, 3] = float("nan")  # in row 0's third of four splits only
    out, lse, _ = run(q, k_pages, v_pages, layout, indices, tiles)
    want = ReferenceBackend().decode(0, q, k_pages, v_pages, page_ids, layout)
    assert torch.isnan(want[0]).all() and torch.isnan(out[0]).all() and torch.isnan(lse[0]).all()
    torch.testing.assert_close(out[1].float(), want[1].float(), atol=2e-2, rtol=2e-2)
    assert torch.isfinite(lse[1]).all()


def test_writes_into_given_out_without_lse():
    q, k_pages, v_pages, page_ids, layout, indices = make_case((6,), (7,), 4, 64, 16, torch.bfloat16, seed=5)
    tiles = DecodeTiles(splits=2, block_pages=2)
    out = torch.full_like(q, float("nan"))
    scratch = PagedDecodeScratch.allocate(1, 4, 64, tiles.splits, q.device)
    returned = paged_decode(
        q, k_pages, v_pages, layout.indptr, indices, layout.last_page_len, scratch, tiles, out=out
    )
    assert returned is out
    want = ReferenceBackend().decode(0, q, k_pages, v_pages, page_ids, layout)
    torch.testing.assert_close(out.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_rejects_mismatched_inputs():
    q, k_pages, v_pages, _, layout, indices = make_case((2,), (4,), 4, 64, 16, torch.bfloat16, seed=7)
    tiles = DecodeTiles(splits=2, block_pages=1)
    wrong = PagedDecodeScratch.allocate(1, 4, 64, 4, q.device)
    with pytest.raises(ValueError, match="scratch"):
        paged_decode(q, k_pages, v_pages, layout.indptr, indices, layout.last_page_len, wrong, tiles)
    with pytest.raises(ValueError, match="pages"):
        scratch = PagedDecodeScratch.allocate(1, 4, 64, 2, q.device)
        paged_decode(
            q, k_pages[..., :32], v_pages, layout.indptr, indices, layout.last_page_len, scratch, tiles
        )
    scratch = PagedDecodeScratch.allocate(1, 4, 64, 2, q.device)
    with pytest.raises(ValueError, match="must be q's"):
        paged_decode(
            q, k_pages.half(), v_pages.half(), layout.indptr, indices, layout.last_page_len, scratch, tiles
        )
    with pytest.raises(ValueError, match="out must be"):
        out = torch.empty(1, 4, 32, dtype=q.dtype, device=q.device)
        paged_decode(
            q, k_pages, v_pages, layout.indptr, indices, layout.last_page_len, scratch, tiles, out=out
        )
    with pytest.raises(ValueError, match="lse must be"):
        lse = torch.empty(1, 4, dtype=torch.bfloat16, device=q.device)
        paged_decode(
            q, k_pages, v_pages, layout.indptr, indices, layout.last_page_len, scratch, tiles, lse=lse
        )
    with pytest.raises(ValueError, match="float32"):
        scratch = PagedDecodeScratch.allocate(1, 4, 64, 2, q.device)
        paged_decode(
            q.float(),
            k_pages.float(),
            v_pages.float(),
            layout.indptr,
            indices,
            layout.last_page_len,
            scratch,
            tiles,
        )


@pytest.mark.parametrize(
    "rows, sms, splits",
    [
        (1, 132, 128),
        (2, 132, 128),
        (4, 132, 64),
        (8, 132, 32),
        (16, 132, 16),
        (64, 132, 4),
        (512, 132, 1),
        (1, 4, 8),
    ],
)
def test_choose_tiles(rows, sms, splits):
    tiles = choose_tiles(rows, sms, 16)
    assert tiles.splits == splits
    assert tiles.block_pages == 8


@pytest.mark.parametrize(
    "max_pages, splits, block_pages",
    [
        (1, 128, 1),
        (65, 128, 1),  # Quest@1024 at batch 1: 64 older pages and the newest
        (129, 128, 2),
        (256, 128, 2),  # 4k tokens at batch 1
        (257, 128, 4),
        (512, 128, 4),
        (1024, 128, 8),
        (256, 32, 8),
        (100, 32, 4),
        (0, 64, 1),  # a step of empty rows
    ],
)
def test_step_tiles_hold_a_splits_pages_in_one_loop_step(max_pages, splits, block_pages):
    widest = DecodeTiles(splits=splits, block_pages=8)
    tiles = step_tiles(widest, max_pages)
    assert (tiles.splits, tiles.block_pages, tiles.warps, tiles.stages) == (splits, block_pages, 4, 2)
    assert not tiles.pipelined
    assert tiles.block_pages in block_pages_options(widest) == (1, 2, 4, 8)
    assert tiles.splits * tiles.block_pages >= max_pages  # one loop step per split
    if tiles.block_pages > 1:  # and no narrower tile would do
        assert tiles.splits * tiles.block_pages // 2 < max_pages


def test_step_tiles_pipeline_only_several_loop_steps():
    """Past one loop step per split a step runs the widest tiles in the pipelined loop; within
    one step, the while loop. Both are among the tiles a slot compiles."""
    widest = choose_tiles(2, 132, 16)  # 128 splits of 8 pages, 2 stages
    long = step_tiles(widest, 2048)  # 16 pages per split: two loop steps
    assert (long.splits, long.block_pages, long.stages, long.pipelined) == (128, 8, 2, True)
    assert not step_tiles(widest, 1024).pipelined
    options = step_tiles_options(widest)
    assert long in options and step_tiles(widest, 1024) in options and step_tiles(widest, 65) in options
    assert len(options) == len(block_pages_options(widest)) + 1


@pytest.mark.parametrize("rows", [1, 2, 4, 8, 16, 64])
@pytest.mark.parametrize("page_size", [1, 16, 64])
def test_every_step_the_rule_takes_runs_a_tile_the_slot_built(rows, page_size):
    """For equal and unequal rows of any length the rule takes, ``step_tiles`` picks one of
    ``step_tiles_options`` (what ``FastDecode.compile`` builds ahead), pipelined only past one
    loop step per split, never below PIPELINED_MIN_SPLITS."""
    widest = choose_tiles(rows, 132, page_size)
    options = step_tiles_options(widest)
    for max_pages in [*range(0, 40), *range(40, 5000, 37)]:
        for total in {max_pages * rows, max_pages + (rows - 1) * (max_pages // 2)}:
            if not runs_triton(max_pages, total, rows, widest):
                continue
            tiles = step_tiles(widest, max_pages)
            assert tiles in options, (max_pages, total)
            assert tiles.pipelined == (max_pages > widest.splits * widest.block_pages)
            assert not tiles.pipelined or widest.splits >= PIPELINED_MIN_SPLITS


@pytest.mark.parametrize("counts, last", [((65, 3), (7, 16)), ((256, 200), (16, 1)), ((300,), (9,))])
def test_step_tiles_match_reference(counts, last):
    """The engine's batch-1 tiles at a 1.5B-like group (2 rows, 128 splits on 132 SMs), each
    step's narrowest tiles against the reference."""
    case = make_case(counts, last, 6, 64, 16, torch.bfloat16, seed=sum(counts), pool=320)
    assert_matches_reference(case, step_tiles(choose_tiles(2, 132, 16), max(counts)))


def test_tiles_validate():
    with pytest.raises(ValueError, match="splits"):
        DecodeTiles(splits=3, block_pages=1)
    with pytest.raises(ValueError, match="stages"):
        DecodeTiles(splits=2, block_pages=1, stages=0)


@pytest.mark.parametrize(
    "max_pages, total_pages, rows, splits, expected",
    [
        (512, 522, 2, 64, True),  # one loop step per split: rows of any balance
        (256, 300, 2, 32, True),
        (513, 523, 2, 64, False),  # past one step, and the rows unequal
        (64, 64, 2, 16, False),  # too few splits for either regime
        (2048, 4096, 2, 128, True),  # equal rows, many loop steps per split (pipelined)
        (2048, 8 * 2048, 8, 32, False),  # 8 equal rows: too few splits to pipeline
        (2048, 64 * 2048, 64, 4, False),
        (1100, 2100, 2, 128, True),  # the longest 1.048x the mean: within BALANCE
        (1200, 2100, 2, 128, False),  # 1.14x
        (0, 0, 2, 128, True),  # a step of empty rows
    ],
)
def test_runs_triton(max_pages, total_pages, rows, splits, expected):
    tiles = DecodeTiles(splits=splits, block_pages=8)
    assert runs_triton(max_pages, total_pages, rows, tiles) is expected


@pytest.mark.parametrize(
    "head_dim, page_size, expected",
    [(128, 16, True), (64, 1, True), (64, 128, True), (256, 16, False), (128, 256, False)],
)
def test_gpu_tested_shapes(head_dim, page_size, expected):
    assert gpu_tested(head_dim, page_size) is expected


@pytest.mark.parametrize("merge_dims", [0, 16, 32, 64])
def test_merge_by_blocks_of_dims_equals_one_program_per_head(merge_dims):
    """The merge's dims per program (:func:`merge_block_d`, or ``merge_dims``) change only the
    order of its sums over the splits: the output within one bf16 rounding and the lse within
    fp32 rounding of one program per head's, and every head's lse written (NaN before)."""
    q, k_pages, v_pages, _, layout, indices = make_case(
        (70, 9), (4, 16), 6, 64, 16, torch.bfloat16, seed=4, pool=90
    )
    tiles = DecodeTiles(splits=128, block_pages=1)
    rows, group, head_dim = q.shape
    want_lse = torch.empty(rows, group, dtype=torch.float32, device=q.device)
    scratch = PagedDecodeScratch.allocate(rows, group, head_dim, tiles.splits, q.device)
    csr = (layout.indptr, indices, layout.last_page_len)
    want = paged_decode(q, k_pages, v_pages, *csr, scratch, tiles, lse=want_lse, merge_dims=head_dim)
    lse = torch.full_like(want_lse, float("nan"))
    got = paged_decode(q, k_pages, v_pages, *csr, scratch, tiles, lse=lse, merge_dims=merge_dims)
    torch.testing.assert_close(got.float(), want.float(), atol=1e-6, rtol=2**-7)
    torch.testing.assert_close(lse, want_lse, atol=1e-5, rtol=1e-6)


def test_merge_block_d_and_its_refusals():
    assert merge_block_d(128, 128) == 32
    assert merge_block_d(64, 128) == 64
    assert merge_block_d(32, 128) == 128
    assert merge_block_d(1024, 64) == 16  # at least 16 dims
    q, k_pages, v_pages, _, layout, indices = make_case((3,), (4,), 4, 64, 16, torch.bfloat16, seed=1)
    scratch = PagedDecodeScratch.allocate(1, 4, 64, 4, q.device)
    for bad in (24, 128):
        with pytest.raises(ValueError, match="merge_dims"):
            paged_decode(
                q, k_pages, v_pages, layout.indptr, indices, layout.last_page_len, scratch,
                DecodeTiles(splits=4, block_pages=1), merge_dims=bad,
            )  # fmt: skip
