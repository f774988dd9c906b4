"""The persistent Quest chain (scoring, top-k and attention in one kernel; measured slower, not
used by the engine) against the three kernels the engine runs instead: ``quest_scores``,
``select_pages`` and ``paged_decode``, each tested against its PyTorch reference in its own file.

Runs on CUDA when present, else on CPU through Triton's interpreter (one program then claims every
item in order); skipped without Triton. The page lists must be equal; the outputs agree to bf16
rounding (the attention splits its pages differently from ``paged_decode``).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels.page_scores import quest_scores
from lil_sparse.kernels.page_select import select_pages
from lil_sparse.kernels.paged_decode import DecodeTiles, PagedDecodeScratch, paged_decode
from lil_sparse.kernels.quest_chain import quest_chain
from lil_sparse.kernels.quest_chain_shape import ChainShape, QuestChainScratch, chain_shape
from lil_sparse.kernels.radix_select import MAX_BLOCK

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GROUP = 4


class Case:
    """Rows of one layer: pages, their bounds, a page table, and what each row holds and takes."""

    def __init__(
        self, held: list[int], count: list[int], width: int, head_dim: int, page_size: int, seed: int
    ):
        gen = torch.Generator().manual_seed(seed)
        rows = len(held)
        pool = rows * width + 1
        self.width = width
        self.k = torch.randn(pool, 1, page_size, head_dim, generator=gen).to(torch.bfloat16).to(DEVICE)
        self.v = torch.randn(pool, 1, page_size, head_dim, generator=gen).to(torch.bfloat16).to(DEVICE)
        self.bounds = torch.stack([self.k.amin(dim=(1, 2)), self.k.amax(dim=(1, 2))], dim=1).contiguous()
        self.q = torch.randn(rows, GROUP, head_dim, generator=gen).to(torch.bfloat16).to(DEVICE)
        self.table = (
            torch.randperm(pool - 1, generator=gen)[: rows * width].view(rows, width).int().to(DEVICE)
        )
        self.held = torch.tensor(held, dtype=torch.long, device=DEVICE)
        self.count = torch.tensor(count, dtype=torch.long, device=DEVICE)
        self.newest = self.table.gather(1, self.held.unsqueeze(1) - 1).view(-1)
        last = torch.randint(1, page_size + 1, (rows,), generator=gen, dtype=torch.int32)
        self.last = last.to(DEVICE)

    def three_kernels(self) -> tuple[list[list[int]], torch.Tensor]:
        """The engine's path: each row's page list and the attention output."""
        scores = quest_scores(self.q, self.bounds, self.table, self.held)
        sizes = self.count + 1
        indptr = torch.zeros(len(sizes) + 1, dtype=torch.int32, device=DEVICE)
        indptr[1:] = sizes.cumsum(0)
        indices = torch.zeros(int(indptr[-1]), dtype=torch.int32, device=DEVICE)
        select_pages(scores, self.count, self.table, self.newest, None, indptr, indices)
        tiles = DecodeTiles(splits=2, block_pages=4)
        scratch = PagedDecodeScratch.allocate(len(sizes), GROUP, self.q.shape[2], tiles.splits, self.q.device)
        out = paged_decode(self.q, self.k, self.v, indptr, indices, self.last, scratch, tiles)
        lists = [indices[indptr[r] : indptr[r + 1]].tolist() for r in range(len(sizes))]
        return lists, out

    def chain(self, shape: ChainShape) -> tuple[list[list[int]], torch.Tensor, QuestChainScratch]:
        rows, _, head_dim = self.q.shape
        scratch = QuestChainScratch.allocate(
            rows, self.width, GROUP, head_dim, shape.attend_items, self.q.device
        )
        out = quest_chain(
            self.q, self.bounds, self.table, self.held, self.count, self.newest, self.last,
            self.k, self.v, scratch, shape,
        )  # fmt: skip
        lists = [scratch.chosen[r, : int(self.count[r]) + 1].tolist() for r in range(rows)]
        return lists, out, scratch


SHAPES = [
    ChainShape(attend_items=2, lag_select=1, lag_attend=2, programs=3),
    ChainShape(1, 0, 0, 2),
    ChainShape(4, 2, 1, 4, warps=4, block_pages=4, score_block=32, stages=2),  # the pipelined page loop
]


@pytest.mark.parametrize("shape", SHAPES, ids=["items2-lags1,2", "items1-no-lags", "items4-pipelined"])
@pytest.mark.parametrize(
    ("width", "held", "count"),
    [
        (16, [16, 9, 16], [4, 8, 0]),  # one block; a row taking every older page; a row taking none
        (40, [40, 33, 21], [9, 31, 5]),  # a main block of 32 and a tail of 16
        (300, [300, 257, 120], [40, 256, 7]),  # two scoring items per row (256 slots each)
    ],
)
def test_the_chain_writes_the_three_kernels_page_lists_and_their_attention(shape, width, held, count) -> None:
    case = Case(held, count, width, head_dim=16, page_size=4, seed=width)
    want_lists, want_out = case.three_kernels()
    lists, out, scratch = case.chain(shape)
    assert lists == want_lists
    torch.testing.assert_close(out.float(), want_out.float(), atol=2e-2, rtol=2e-2)
    assert not scratch.sync.any()  # zeroed by the last program: the next call starts clean
    again, out_again, _ = case.chain(shape)  # as a CUDA graph replays it
    assert again == lists
    torch.testing.assert_close(out_again, out, atol=0, rtol=0)


def test_ties_go_to_the_older_slot_as_in_select_pages() -> None:
    case = Case([24, 24], [7, 12], 24, head_dim=16, page_size=4, seed=3)
    case.bounds.zero_()  # every page scores 0: the selection is decided by the tie rule alone
    want_lists, want_out = case.three_kernels()
    lists, out, _ = case.chain(SHAPES[0])
    assert (
        lists
        == want_lists
        == [[*case.table[r, : int(case.count[r])].tolist(), int(case.newest[r])] for r in range(2)]
    )
    torch.testing.assert_close(out.float(), want_out.float(), atol=2e-2, rtol=2e-2)


def test_chain_shape_sizes_the_attention_items_by_the_budget() -> None:
    assert chain_shape(256, 132) == ChainShape(attend_items=4, lag_select=4, lag_attend=12, programs=264)
    assert chain_shape(65, 132).attend_items == 2  # 65 pages: two items, a power of two
    assert chain_shape(1, 132).attend_items == 1


def call(case: Case, scratch: QuestChainScratch, shape: ChainShape, **changed: torch.Tensor) -> None:
    """:func:`quest_chain` on ``case``'s tensors, with ``changed`` ones swapped in."""
    given = {
        "q": case.q, "key_bounds": case.bounds, "table": case.table, "held": case.held, "count": case.count,
        "newest": case.newest, "last_page_len": case.last, "k_pages": case.k, "v_pages": case.v,
    }  # fmt: skip
    quest_chain(**{**given, **changed}, scratch=scratch, shape=shape)


def test_mismatched_inputs_are_refused_with_a_clear_error() -> None:
    case = Case([16, 16], [3, 5], 16, head_dim=16, page_size=4, seed=0)
    device = torch.device(DEVICE)
    scratch = QuestChainScratch.allocate(2, 16, GROUP, 16, attend_items=2, device=device)
    shape = ChainShape(2, 0, 0, 2)
    refused = [
        ({}, ChainShape(1, 0, 0, 2), r"scratch is for .* \(2, 16, 4, 16, 2\), not \(2, 16, 4, 16, 1\)"),
        ({}, ChainShape(2, 0, 0, 2, block_pages=2), "16 tokens per attention step at least, got 8"),
        ({"q": case.q.float()}, shape, "must share bf16 or fp16"),
        ({"q": case.q.transpose(1, 2).contiguous().transpose(1, 2)}, shape, "must be contiguous"),
        ({"table": case.table[:, :8]}, shape, r"table \(2, 8\) must be \[2, 16\]"),
        ({"count": case.count[:1]}, shape, r"count must be \[2\], got \(1,\)"),
        ({"last_page_len": torch.stack([case.last, case.last], 1)[:, 0]}, shape, "must be contiguous"),
        ({"key_bounds": case.bounds[:, :, :8]}, shape, r"key_bounds \(\d+, 2, 8\) must be \[P, 2, 16\]"),
        ({"k_pages": case.k[:, :, :, :8].contiguous()}, shape, "must be \\[P, 1, S, 16\\]"),
    ]
    for changed, chain, message in refused:
        with pytest.raises(ValueError, match=message):
            call(case, scratch, chain, **changed)
    wide = QuestChainScratch.allocate(2, MAX_BLOCK + 1, GROUP, 16, attend_items=2, device=device)
    with pytest.raises(ValueError, match=f"at most {MAX_BLOCK}"):
        table = torch.zeros(2, MAX_BLOCK + 1, dtype=torch.int32, device=device)
        call(case, wide, shape, table=table)
    with pytest.raises(ValueError, match="out must be a contiguous"):
        quest_chain(
            case.q, case.bounds, case.table, case.held, case.count, case.newest, case.last,
            case.k, case.v, scratch, shape, out=case.q.float(),
        )  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"attend_items": 3}, "attend_items must be a positive power of two, got 3"),
        ({"score_block": 512}, "score_block must be at most 256, got 512"),
        ({"lag_select": -1}, "lag_select must be >= 0, got -1"),
        ({"programs": 0}, "programs must be >= 1, got 0"),
        ({"stages": 0}, "stages must be >= 1, got 0"),
        ({"warps": 6}, "warps must be a positive power of two, got 6"),
    ],
)
def test_a_shape_the_kernel_cannot_run_is_refused(fields: dict[str, int], message: str) -> None:
    # score_block 512 would score nothing (no block of 512 fits a 256-slot item) and a negative
    # lag would queue a row's top-k before its scoring, which would then wait forever.
    base = {"attend_items": 2, "lag_select": 0, "lag_attend": 0, "programs": 2}
    with pytest.raises(ValueError, match=message):
        ChainShape(**{**base, **fields})
