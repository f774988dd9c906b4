"""When the engine runs the Triton paged decode (:mod:`lil_sparse.kernels.paged_decode`), and
with which tiles: the regime rules, measured on the H200, and the per-slot :class:`FastDecode`
that :class:`lil_sparse.attention.flashinfer_backend.FlashInferBackend` keeps for a decode slot
whose rows qualify.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lil_sparse.kernels.paged_decode import DecodeTiles, PagedDecodeScratch, paged_decode

MAX_SPLITS = 128
"""Splits per row at most: the most the 2026-12-01 sweep tried (``bench/paged_decode_micro.py
--sweep``); the merge reads ``MAX_SPLITS x D`` fp32 partials per (row, head), spread over
:func:`~lil_sparse.kernels.paged_decode.merge_block_d` programs."""

LOOP_STEP_TOKENS = 128
"""Tokens of one loop step of the widest tiles (``block_pages * page_size``)."""


def choose_tiles(rows: int, num_sms: int, page_size: int) -> DecodeTiles:
    """A slot's widest tiles for ``rows`` rows on a GPU of ``num_sms`` SMs: the most splits per
    row, a power of two, that keep the grid within two programs per SM, at most
    :data:`MAX_SPLITS`, and :data:`LOOP_STEP_TOKENS` tokens per loop step, at :class:`DecodeTiles`'
    default 4 warps. A step runs the narrower tiles of :func:`step_tiles`; which steps run them:
    :func:`runs_triton`. 8 warps at 2 pages per step won the micro-benchmark at 2 rows x 256
    pages (6.1 against 6.6 us) but lost in the step: the 1.5B batch-1 4k step took 1.156 against
    1.141 ms, two rounds alternately (H200, 2026-12-01 12:18, ``bench/decode_warps_ab.py``)."""
    per_row = max(1, 2 * num_sms // max(rows, 1))
    splits = min(MAX_SPLITS, 1 << (per_row.bit_length() - 1))
    return DecodeTiles(splits=splits, block_pages=max(1, LOOP_STEP_TOKENS // page_size))


def step_tiles(tiles: DecodeTiles, max_pages: int) -> DecodeTiles:
    """The tiles a step whose longest row holds ``max_pages`` pages runs: ``tiles``' splits with
    the fewest pages per loop step (a power of two, at most ``tiles.block_pages``) that still
    hold a split's pages in one step, so a program loads no masked pages beyond the rounding of
    its pages up to a power of two, in the ``while`` loop; a split of more pages than one widest
    step gets the widest tiles, ``pipelined`` (the ``tl.range`` loop). At 2 rows, 128 splits per
    row, on the H200 (docs/bench/paged_decode_micro.md, 2026-12-01 09:38 UTC, kernel + a per-head merge): 256
    pages took 7.0 us at 2 pages per step (8.1 us for the 64 x 8 tiles of before, 09:27, printed
    output), 65 pages (Quest@1024) 5.8 us at 1 page (7.4 before)."""
    per_split = -(-max(max_pages, 1) // tiles.splits)
    block_pages = min(tiles.block_pages, 1 << (per_split - 1).bit_length())
    # Several loop steps per split: the pipelined loop (DecodeTiles.pipelined).
    return DecodeTiles(tiles.splits, block_pages, tiles.warps, tiles.stages, per_split > block_pages)


def block_pages_options(tiles: DecodeTiles) -> tuple[int, ...]:
    """Every ``block_pages`` :func:`step_tiles` can choose for a slot's ``tiles`` (1, 2, 4, ...)."""
    return tuple(1 << i for i in range(tiles.block_pages.bit_length()))


def step_tiles_options(tiles: DecodeTiles) -> tuple[DecodeTiles, ...]:
    """Every tile :func:`step_tiles` can pick for a step that :func:`runs_triton` takes, with a
    slot's widest ``tiles``: each :func:`block_pages_options` width in the ``while`` loop (one
    loop step per split), and, from :data:`PIPELINED_MIN_SPLITS` splits per row, the widest
    pipelined (several)."""
    one_step = tuple(
        DecodeTiles(tiles.splits, b, tiles.warps, tiles.stages) for b in block_pages_options(tiles)
    )
    if tiles.splits < PIPELINED_MIN_SPLITS:
        return one_step
    return (*one_step, DecodeTiles(tiles.splits, tiles.block_pages, tiles.warps, tiles.stages, True))


GPU_TESTED_HEAD_DIMS = (64, 128)
"""Head dims the kernel has run on a GPU (the tiny test models' 64, the benchmark shapes' 128).
Each program holds a ``[128, D]`` K and V tile; at 256 they were never compiled for a GPU, where
they may not fit the shared memory, so :func:`gpu_tested` keeps FlashInfer for them."""

MAX_PAGE_SIZE = 128
"""Larger pages would make a loop step (at least one page) wider than 128 tokens."""


def gpu_tested(head_dim: int, page_size: int) -> bool:
    """Whether the engine may run the Triton decode for the model's ``head_dim`` and the cache's
    ``page_size``: shapes whose tiles have run on a GPU (:data:`GPU_TESTED_HEAD_DIMS`, loop steps
    of 128 tokens)."""
    return head_dim in GPU_TESTED_HEAD_DIMS and page_size <= MAX_PAGE_SIZE


MIN_SPLITS = 32
"""Fewer splits per row than this leave the grid too small to hide latency (the 1.5B shape's
batch 8, 16 rows of 16 splits, ran 22.9 against FlashInfer's 20.7 us; H200,
``bench/paged_decode_micro.py``, 2026-11-30, about 20:00). With the page loop software-pipelined
the micro-benchmark had the Triton decode ahead of FlashInfer down to 64 rows of 4 splits
(2026-12-01 14:52), but the steps of 8 to 64 rows ran 1-7% slower with it than with FlashInfer
(docs/bench/paged_decode_pipelining.md), so this stays."""

PIPELINED_MIN_SPLITS = 64
"""Splits per row from which a step of nearly equal rows too long for one loop step per split
takes the Triton decode, software-pipelined (:func:`runs_triton`): rows of at most 4 on 132 SMs.
The 1.5B shape's batch-1 step at 32k (2 rows of 2048 pages, 128 splits) took 1.491 ms against
1.525 with FlashInfer's decode, Quest@1024 (gated dense) 1.506-1.508 against 1.552-1.553, the 4k
steps unchanged (H200, 2026-12-01 15:23-15:24, two rounds alternately,
docs/bench/paged_decode_pipelining.md). Steps of 8 to 64 rows ran 1-7% slower on the pipelined
Triton decode than on FlashInfer's (the same file, 15:01), hence the bound."""

BALANCE = 1.125
"""Longest row over the mean row (in pages) up to which a step takes the pipelined Triton decode
(:func:`runs_triton`). Its grid gives every row the same splits, so the longest row's programs
bound the step, while FlashInfer's plan spreads the pages over its CTAs. Measured only at equal
rows (a batch-1 step's rows are one sequence's KV heads); the margin is a judgment."""


def runs_triton(max_pages: int, total_pages: int, rows: int, tiles: DecodeTiles) -> bool:
    """Whether a step whose ``rows`` rows hold ``total_pages`` pages, the longest ``max_pages``,
    runs the Triton decode with a slot's widest ``tiles`` (else FlashInfer's planned decode):
    either every split's pages fit one loop step (the latency-bound regime, rows of any balance;
    the slot has at least :data:`MIN_SPLITS` splits per row), or the tiles have at least
    :data:`PIPELINED_MIN_SPLITS` and the longest row holds at most :data:`BALANCE` times the mean
    row's pages (the pipelined regime). A step of no pages (``total_pages`` 0) counts as
    balanced."""
    one_step = tiles.splits >= MIN_SPLITS and max_pages <= tiles.splits * tiles.block_pages
    balanced = max_pages * rows <= BALANCE * total_pages
    return one_step or (tiles.splits >= PIPELINED_MIN_SPLITS and balanced)


@dataclass(frozen=True)
class FastDecode:
    """The Triton decode's widest launch shape (:func:`choose_tiles`), split-KV scratch and the
    cache's ``page_size`` (tokens per page, which the kernel is specialized on) for one decode
    slot's rows."""

    tiles: DecodeTiles
    scratch: PagedDecodeScratch
    page_size: int

    def run(
        self,
        q: torch.Tensor,
        k_pages: torch.Tensor,
        v_pages: torch.Tensor,
        indptr: torch.Tensor,
        indices: torch.Tensor,
        last_page_len: torch.Tensor,
        return_lse: bool,
        tiles: DecodeTiles | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`paged_decode` over the slot's CSR buffers with ``tiles`` (this step's
        :func:`step_tiles`; None: the widest): ``out: [rows, G, D]``, and ``lse: [rows, G]
        float32`` (base 2) when asked, as a FlashInfer slot's ``run`` returns them."""
        tiles = self.tiles if tiles is None else tiles
        if tiles.splits != self.tiles.splits:
            raise ValueError(f"FastDecode.run: {tiles.splits} splits, the scratch holds {self.tiles.splits}")
        if tiles.block_pages > self.tiles.block_pages:  # (powers of two) only tiles compile() built
            raise ValueError(f"FastDecode.run: {tiles.block_pages} pages per step, not one of the slot's")
        lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device) if return_lse else None
        out = paged_decode(q, k_pages, v_pages, indptr, indices, last_page_len, self.scratch, tiles, lse=lse)
        return out, lse

    def compile(self, dtype: torch.dtype) -> None:
        """Build every kernel variant :func:`step_tiles` can pick for this slot
        (:func:`step_tiles_options`: one per ``block_pages``, the pipelined widest where the rule
        can take it, and the merge with and without the lse) now, by running each over rows of
        no pages: Triton compiles a variant the first time it runs, which inside a request would
        stall every stream of the engine (a long decode reaches wider tiles only after minutes).
        Writes only the scratch (every partial lse ``-inf``, every partial output 0)."""
        rows, _, group, head_dim = self.scratch.partial_out.shape
        device = self.scratch.partial_out.device
        q = torch.zeros(rows, group, head_dim, dtype=dtype, device=device)
        pages = torch.zeros(1, 1, self.page_size, head_dim, dtype=dtype, device=device)
        empty = torch.zeros(rows + 1, dtype=torch.int32, device=device)
        last = torch.ones(rows, dtype=torch.int32, device=device)
        lse = torch.empty(rows, group, dtype=torch.float32, device=device)
        for tiles in step_tiles_options(self.tiles):
            paged_decode(q, pages, pages, empty, empty, last, self.scratch, tiles)
        paged_decode(q, pages, pages, empty, empty, last, self.scratch, self.tiles, lse=lse)  # H2O's merge


def make_fast_decode(
    rows: int, group: int, head_dim: int, page_size: int, num_sms: int, device: torch.device
) -> FastDecode | None:
    """The Triton decode for a decode slot of ``rows`` rows of ``group`` query heads, or None
    where it does not apply: fewer than :data:`MIN_SPLITS` splits per row on ``num_sms`` SMs, or a head_dim
    or page size it has not run on a GPU (:func:`gpu_tested`). Allocates its scratch on
    ``device``."""
    tiles = choose_tiles(rows, num_sms, page_size)
    if tiles.splits < MIN_SPLITS or not gpu_tested(head_dim, page_size):
        return None
    scratch = PagedDecodeScratch.allocate(rows, group, head_dim, tiles.splits, device)
    return FastDecode(tiles, scratch, page_size)
