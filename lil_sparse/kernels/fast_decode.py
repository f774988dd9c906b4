"""When the engine runs the Triton paged decode (:mod:`lil_sparse.kernels.paged_decode`), and
with which tiles: the regime rules, measured on the H200, and the per-slot :class:`FastDecode`
that :class:`lil_sparse.attention.flashinfer_backend.FlashInferBackend` keeps for a decode slot
whose rows qualify.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lil_sparse.kernels.paged_decode import DecodeTiles, PagedDecodeScratch, paged_decode


def choose_tiles(rows: int, num_sms: int, page_size: int) -> DecodeTiles:
    """Tiles for ``rows`` rows on a GPU of ``num_sms`` SMs: the most splits per row, a power of two,
    that keep the grid within two programs per SM, at most 64 (a merge program reads every
    split's ``[D]`` fp32 partial of its head), and 128 tokens per loop step."""
    per_row = max(1, 2 * num_sms // max(rows, 1))
    splits = min(64, 1 << (per_row.bit_length() - 1))
    return DecodeTiles(splits=splits, block_pages=max(1, 128 // page_size))


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
``bench/paged_decode_micro.py``, 2026-11-30, about 20:00). The 22:08 run of the same benchmark
(tf32 product, ``docs/bench/paged_decode_micro.md``) had that case at 17.3 against 20.9 us, two
loop steps per split: this rule and :func:`runs_in_one_step` were not revisited."""


def runs_in_one_step(max_pages: int, tiles: DecodeTiles) -> bool:
    """Whether rows of at most ``max_pages`` pages take the Triton decode's fast regime: at least
    :data:`MIN_SPLITS` splits per row, each split's pages one loop step (the page loop is not
    software-pipelined, so longer runs lose to FlashInfer: 34.0 against 22.3 us at 2 rows x 2048
    pages, same benchmark)."""
    return tiles.splits >= MIN_SPLITS and max_pages <= tiles.splits * tiles.block_pages


@dataclass(frozen=True)
class FastDecode:
    """The Triton decode's launch shape and split-KV scratch for one decode slot's rows."""

    tiles: DecodeTiles
    scratch: PagedDecodeScratch

    def run(
        self,
        q: torch.Tensor,
        k_pages: torch.Tensor,
        v_pages: torch.Tensor,
        indptr: torch.Tensor,
        indices: torch.Tensor,
        last_page_len: torch.Tensor,
        return_lse: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`paged_decode` over the slot's CSR buffers: ``out: [rows, G, D]``, and ``lse:
        [rows, G] float32`` (base 2) when asked, as a FlashInfer slot's ``run`` returns them."""
        lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device) if return_lse else None
        out = paged_decode(
            q, k_pages, v_pages, indptr, indices, last_page_len, self.scratch, self.tiles, lse=lse
        )
        return out, lse


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
    return FastDecode(tiles, PagedDecodeScratch.allocate(rows, group, head_dim, tiles.splits, device))
