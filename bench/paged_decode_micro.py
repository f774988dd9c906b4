"""Kernel time of decode attention: FlashInfer's planned decode (what the engine runs today)
against the Triton decode of :mod:`lil_sparse.kernels.paged_decode`, on the row
counts and page counts of the benchmark cells, against the bandwidth floor (K + V bytes in bf16
/ the copy bandwidth of the same run, as the decode benchmark counts it).

Rows are (sequence, KV head) pairs over one-head pages of 16 tokens, as the engine lays them out.
Each figure is the median of ``--iters`` replays of a CUDA graph of calls, each call on its own
layer's pages (enough layers to overflow the 50 MB L2, as a step reads each layer's KV from HBM),
divided by the number of calls. FlashInfer runs as
:class:`lil_sparse.attention.flashinfer_backend.FlashInferBackend` configures it (CUDA-graph
mode, HND, tensor cores for these groups, planned once outside the graph). Both outputs are
compared (largest absolute difference), and the table says which kernel the engine's rule
(:data:`~lil_sparse.kernels.fast_decode.MIN_SPLITS` and
:func:`~lil_sparse.kernels.fast_decode.runs_triton`) runs for the case. The Triton column times
the tiles ``step_tiles`` picks, so a case past one loop step per split times the pipelined loop,
whichever kernel the engine runs there.

``--split-sweep`` also times FlashInfer planned with each ``fixed_split_size`` of
:data:`SPLIT_SWEEP` (pages per split-KV chunk; FlashInfer's tensor-core decode only) and prints
the fastest beside its own choice: whether FlashInfer's chunking leaves bandwidth unused at a
shape (printed, not in the table). In CUDA-graph mode (the engine's) FlashInfer 0.6.6's ``plan()``
refuses a chunk size that gives more CTAs than its padded batch, 2 per SM over the KV heads (264
for one-head rows on the H200's 132 SMs; ``PrefillSplitQOKVIndptr``, scheduler.cuh: "new batch
size should not exceed padded batch size"), and its own choice is the smallest chunk within that
cap, so only larger chunks can be tried; the refused sizes are listed. At 64 rows of 257 pages
(Quest@4096, 8B, batch 8) its own choice is 65 pages, 4 chunks a row (H200, 2026-12-02 00:18
UTC, docs/bench/quest_chain.md).

    python bench/paged_decode_micro.py [--sweep] [--merge-sweep] [--split-sweep] [--cases NAME,...] \
        [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
import triton

from bench.common import copy_bandwidth_gbs, settle_cuda_graphs, write_markdown
from bench.linear_timing import L2_OVERFLOW_BYTES, graph_us
from lil_sparse.kernels.fast_decode import MIN_SPLITS, choose_tiles, runs_triton, step_tiles
from lil_sparse.kernels.paged_decode import DecodeTiles, PagedDecodeScratch, paged_decode

PAGE_SIZE = 16
HEAD_DIM = 128
MAX_POOL_BYTES = 4 * 2**30
# (shape, group, rows, pages per row): batch 1, 8 and 32 of the 1.5B shape (2 KV heads, group 6)
# and the 8B shape (8 KV heads, group 4) at 4k and 32k tokens, and Quest's budgets 1024 and 4096.
CASES = [
    ("qwen1.5b b1 4k", 6, 2, 256),
    ("qwen1.5b b1 32k", 6, 2, 2048),
    ("qwen1.5b b1 quest@1024", 6, 2, 65),
    ("qwen1.5b b1 8k", 6, 2, 512),
    ("qwen1.5b b1 16k", 6, 2, 1024),
    ("qwen1.5b b8 4k", 6, 16, 256),
    ("qwen1.5b b32 4k", 6, 64, 256),
    ("llama8b b1 4k", 4, 8, 256),
    ("llama8b b1 32k", 4, 8, 2048),
    ("llama8b b8 4k", 4, 64, 256),
    ("llama8b b8 quest@4096", 4, 64, 257),
    ("llama8b b8 32k", 4, 64, 2048),
]
SWEEP = [
    DecodeTiles(splits, block_pages, warps, stages, pipelined)
    for splits, block_pages, (warps, stages, pipelined) in itertools.product(
        (4, 8, 16, 32, 64, 128),
        (1, 2, 4, 8),
        ((4, 2, False), (8, 2, False), (4, 2, True), (4, 3, True), (4, 4, True), (8, 2, True), (8, 3, True)),
    )
]
"""Tiles ``--sweep`` tries, those of them whose grid holds ``num_sms / 2`` to ``8 * num_sms``
programs (:func:`swept_tiles`): the ``while`` loop at 4 and 8 warps (``stages`` changes nothing
there), and the pipelined loop at 2-4 stages."""

SPLIT_SWEEP = (4, 8, 16, 32, 64, 65, 66, 72, 86, 96, 129, 257)
"""FlashInfer ``fixed_split_size`` values (pages) ``--split-sweep`` tries."""


def swept_tiles(rows: int, num_sms: int) -> list[DecodeTiles]:
    """The :data:`SWEEP` tiles for ``rows`` rows on ``num_sms`` SMs."""
    return [t for t in SWEEP if num_sms // 2 <= rows * t.splits <= 8 * num_sms]


MERGE_DIMS = tuple(16 << i for i in range((HEAD_DIM // 16).bit_length()))  # 16, 32, ..., HEAD_DIM


class Case:
    """``layers`` copies of K/V pages and one page table, q per layer, FlashInfer planned once."""

    def __init__(self, group: int, rows: int, pages: int, seed: int = 0, split: int | None = None) -> None:
        import flashinfer

        gen = torch.Generator(device="cuda").manual_seed(seed)
        self.rows, self.group = rows, group
        self.bytes = 2 * rows * pages * PAGE_SIZE * HEAD_DIM * 2
        self.layers = max(2, min(64, -(-L2_OVERFLOW_BYTES // self.bytes), MAX_POOL_BYTES // self.bytes))
        pool = rows * pages
        shape = (self.layers, pool, 1, PAGE_SIZE, HEAD_DIM)
        self.k = torch.randn(shape, generator=gen, device="cuda", dtype=torch.bfloat16)
        self.v = torch.randn(shape, generator=gen, device="cuda", dtype=torch.bfloat16)
        self.q = torch.randn(
            self.layers, rows, group, HEAD_DIM, generator=gen, device="cuda", dtype=torch.bfloat16
        )
        self.indptr = torch.arange(0, pool + 1, pages, dtype=torch.int32, device="cuda")
        self.indices = torch.randperm(pool, generator=gen, device="cuda").to(torch.int32)
        self.last = torch.randint(1, PAGE_SIZE + 1, (rows,), generator=gen, device="cuda", dtype=torch.int32)
        self.out = torch.empty_like(self.q)
        self.workspace = torch.zeros(128 * 2**20, dtype=torch.uint8, device="cuda")
        self.wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace,
            "HND",
            use_cuda_graph=True,
            use_tensor_cores=True,
            paged_kv_indptr_buffer=self.indptr.clone(),
            paged_kv_indices_buffer=self.indices.clone(),
            paged_kv_last_page_len_buffer=self.last.clone(),
        )
        self.wrapper.plan(
            self.indptr.cpu(), self.indices, self.last.cpu(), group, 1, HEAD_DIM, PAGE_SIZE,
            q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16, fixed_split_size=split,
        )  # fmt: skip

    def flashinfer(self, layer: int) -> None:
        self.out[layer] = self.wrapper.run(self.q[layer], (self.k[layer], self.v[layer]))

    def triton(
        self, tiles: DecodeTiles, scratch: PagedDecodeScratch, out: torch.Tensor, layer: int, merge_dims: int
    ) -> None:
        paged_decode(
            self.q[layer], self.k[layer], self.v[layer], self.indptr, self.indices, self.last,
            scratch, tiles, out=out[layer], merge_dims=merge_dims,
        )  # fmt: skip

    def time_triton(self, tiles: DecodeTiles, iters: int, merge_dims: int = 0) -> tuple[float, float]:
        """(us per call, largest |difference| from FlashInfer's output); ``merge_dims`` as
        :func:`paged_decode` takes it (0: the kernel's rule)."""
        scratch = PagedDecodeScratch.allocate(
            self.rows, self.group, HEAD_DIM, tiles.splits, torch.device("cuda")
        )
        out = torch.empty_like(self.q)
        us = graph_us(lambda layer: self.triton(tiles, scratch, out, layer, merge_dims), self.layers, iters)
        return us, (out.float() - self.out.float()).abs().max().item()


def split_sweep(group: int, rows: int, pages: int, iters: int, own_us: float) -> str:
    """FlashInfer's time at each :data:`SPLIT_SWEEP` chunk size against its own choice
    (``own_us``), fastest first, with the largest |difference| from its own choice's output."""
    reference = Case(group, rows, pages)
    reference.flashinfer(0)
    timed = []
    refused: list[str] = []
    for split in SPLIT_SWEEP:
        if split >= 2 * pages:  # one chunk per row: no split at all
            continue
        try:
            case = Case(group, rows, pages, split=split)
        except RuntimeError as error:  # more CTAs than CUDA-graph mode's padded batch (docstring)
            if "should not exceed padded batch size" not in str(error):
                raise
            refused.append(str(split))
            continue
        us = graph_us(case.flashinfer, case.layers, iters)
        case.flashinfer(0)
        diff = (case.out[0].float() - reference.out[0].float()).abs().max().item()
        timed.append((us, split, diff))
        del case
        torch.cuda.empty_cache()
    timed.sort()
    cells = ", ".join(f"{split} pages {us:.1f} us (|diff| {diff:.4f})" for us, split, diff in timed)
    return f"own choice {own_us:.1f} us; {cells}; refused by plan(): {', '.join(refused) or 'none'}"


def _shape(tiles: DecodeTiles) -> str:
    loop = f"pipelined s{tiles.stages}" if tiles.pipelined else "while"
    return f"{tiles.splits}x{tiles.block_pages}, w{tiles.warps} {loop}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--sweep", action="store_true", help="also time every tile of SWEEP")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cases", default="", help="comma list of case names to run (default: all)")
    parser.add_argument(
        "--split-sweep", action="store_true", help="also time FlashInfer at every fixed_split_size"
    )
    parser.add_argument(
        "--merge-sweep", action="store_true", help="also time the engine's tiles at every merge block of dims"
    )
    args = parser.parse_args()
    wanted = {name.strip() for name in args.cases.split(",") if name.strip()}
    unknown = wanted - {case[0] for case in CASES}
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {[case[0] for case in CASES]}")
    settle_cuda_graphs()
    bandwidth = copy_bandwidth_gbs()
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"copy bandwidth (read + write): {bandwidth:.0f} GB/s", flush=True)
    table = []
    for name, group, rows, pages in CASES:
        if wanted and name not in wanted:
            continue
        case = Case(group, rows, pages)
        flashinfer_us = graph_us(case.flashinfer, case.layers, args.iters)
        widest = choose_tiles(rows, num_sms, PAGE_SIZE)
        tiles = step_tiles(widest, pages)  # what the engine runs for these rows
        triton_us, diff = case.time_triton(tiles, args.iters)
        head_merge_us, _ = case.time_triton(tiles, args.iters, merge_dims=HEAD_DIM)  # one program per head
        if args.merge_sweep:  # dims per merge program: 16 up to the whole head
            merges = [(case.time_triton(tiles, args.iters, merge_dims=d)[0], d) for d in MERGE_DIMS]
            print(f"  {name} merge dims per program: " + ", ".join(f"{d}: {us:.1f} us" for us, d in merges))
        best = ""
        if args.sweep:
            swept = []
            for t in swept_tiles(rows, num_sms):
                try:
                    swept.append((case.time_triton(t, args.iters)[0], t))
                except triton.runtime.errors.OutOfResources:  # e.g. 4 stages of 8-page K/V tiles
                    print(f"  {name} {_shape(t)}: out of shared memory", flush=True)
            swept.sort(key=lambda s: s[0])
            best_us, best_tiles = swept[0]
            print(f"  {name} fastest swept: " + ", ".join(f"{us:.1f} us {_shape(t)}" for us, t in swept[:4]))
            best = f"{best_us:.1f} ({_shape(best_tiles)})"
        floor_us = case.bytes / (bandwidth * 1e9) * 1e6
        takes = widest.splits >= MIN_SPLITS and runs_triton(pages, rows * pages, rows, widest)
        engine = "Triton" if takes else "FlashInfer"  # the backend's rule
        row = [
            name, rows, pages, f"{flashinfer_us:.1f}", f"{triton_us:.1f}", f"{head_merge_us:.1f}",
            f"{tiles.splits}x{tiles.block_pages}", best, f"{floor_us:.1f}",
            f"{flashinfer_us / triton_us:.2f}", engine, f"{diff:.4f}",
        ]  # fmt: skip
        print(" | ".join(str(c) for c in row), flush=True)
        table.append(row)
        del case
        torch.cuda.empty_cache()
        if args.split_sweep:
            swept_splits = split_sweep(group, rows, pages, args.iters, flashinfer_us)
            print(f"  {name} FlashInfer by fixed_split_size: {swept_splits}", flush=True)
    if args.out:
        header = [
            "case", "rows", "pages/row", "FlashInfer us", "Triton us", "Triton us, merge per head",
            "tiles (splits x pages)",
            "best swept us (tiles)", "floor us", "FlashInfer / Triton", "engine runs", "max |diff|",
        ]  # fmt: skip
        notes = [
            f"copy bandwidth measured in this run: {bandwidth:.0f} GB/s (read + write);"
            " floor = K + V bf16 bytes / that bandwidth",
            "each figure: median of CUDA-graph replays of one call per layer copy (L2 overflowed), per call",
        ]
        write_markdown(
            args.out,
            "Decode attention: FlashInfer against the Triton decode",
            notes,
            header,
            table,
        )


if __name__ == "__main__":
    main()
