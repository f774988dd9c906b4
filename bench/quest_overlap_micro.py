"""Whether Quest's selection latency hides under bandwidth-bound work when a layer's rows run in
staggered parts on side streams: the T4 question of issue 11 (docs/gpu.md, the T4 bullet).

One layer of Quest's sparse decode at the 8B shape, batch 8, 32k tokens, budget 4096 (64 rows of
(sequence, KV head), 2048 one-head pages of 16 tokens each, 255 older pages chosen plus the
newest, group 4, head_dim 128, bf16): the scoring (:func:`~lil_sparse.kernels.page_scores.quest_scores`,
bandwidth-bound: 67 MB of bounds), the top-k into the page list
(:func:`~lil_sparse.kernels.page_select.select_pages`, latency-bound: one program per row) and
the attention over the chosen pages (134 MB of K/V), by FlashInfer's planned decode (what the
engine runs for these rows) or the Triton decode (:mod:`lil_sparse.kernels.paged_decode`).

``parts=1``: the three kernels over all rows, one stream (the engine today). ``parts=N``: the rows
in N equal parts, part ``p`` on its own stream, its scoring queued after part ``p - 1``'s, so part
``p``'s top-k can run beside part ``p + 1``'s scoring and part ``p - 1``'s attention. Each figure
is the median of ``--iters`` replays of a CUDA graph of ``--layers`` layers (each on its own copy
of the bounds and pages, so every layer reads HBM), per layer, against the bytes' floor (bounds +
chosen K/V in bf16 / the copy bandwidth of the run). Each variant's output is compared with the
serial one's (largest absolute difference; the Triton decode's splits follow the rows per call).
Variants alternate within each of ``--rounds`` rounds; the median of the rounds is printed with
every round. ``--breakdown 64,128,256,512`` times instead each kernel alone and the serial chain
at those chosen pages per row (the attention's time against its pages gives its fixed part).

Measured (H200, 2026-12-02 00:22-00:26 UTC, docs/bench/quest_chain.md): the parts lose; one stream
is fastest (81.7 us a layer with FlashInfer, 91.7 / 117.7 / 150.7 at 2 / 4 / 8 parts).

    python bench/quest_overlap_micro.py [--parts 1,2,4] [--attention flashinfer,triton] [--rounds 3]
        [--breakdown 64,128,256,512]
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch

from bench.common import copy_bandwidth_gbs, settle_cuda_graphs
from bench.linear_timing import graph_us
from lil_sparse.kernels.fast_decode import choose_tiles, step_tiles
from lil_sparse.kernels.page_scores import quest_scores
from lil_sparse.kernels.page_select import select_pages
from lil_sparse.kernels.paged_decode import PagedDecodeScratch, paged_decode
from lil_sparse.kernels.quest_chain import quest_chain
from lil_sparse.kernels.quest_chain_shape import QuestChainScratch, chain_shape

PAGE_SIZE = 16
HEAD_DIM = 128
GROUP = 4
ROWS = 64  # 8 sequences x 8 KV heads
SLOTS = 2048  # 32k tokens
CHOSEN = 256  # budget 4096 tokens: 255 older pages + the newest


class Layer:
    """One layer's bounds, pages and page table, with the selection's outputs."""

    def __init__(self, seed: int) -> None:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        pool = ROWS * SLOTS
        self.k = torch.randn(pool, 1, PAGE_SIZE, HEAD_DIM, generator=gen, device="cuda", dtype=torch.bfloat16)
        self.v = torch.randn(pool, 1, PAGE_SIZE, HEAD_DIM, generator=gen, device="cuda", dtype=torch.bfloat16)
        self.bounds = torch.stack(
            [self.k.amin(dim=(1, 2)), self.k.amax(dim=(1, 2))], dim=1
        ).contiguous()  # [pool, 2, D]
        self.q = torch.randn(ROWS, GROUP, HEAD_DIM, generator=gen, device="cuda", dtype=torch.bfloat16)
        self.table = torch.randperm(pool, generator=gen, device="cuda").view(ROWS, SLOTS).int()
        self.out = torch.empty_like(self.q)


class Variant:
    """A layer's rows in ``parts`` parts, each part's three kernels on its own stream."""

    def __init__(self, parts: int, attention: str, layers: list[Layer], chosen: int = CHOSEN) -> None:
        self.parts, self.attention, self.layers, self.chosen = parts, attention, layers, chosen
        self.rows = ROWS // parts
        device = torch.device("cuda")
        self.held = torch.full((ROWS,), SLOTS, dtype=torch.long, device=device)
        self.count = torch.full((ROWS,), chosen - 1, dtype=torch.long, device=device)
        self.indptr = torch.arange(ROWS + 1, dtype=torch.int32, device=device) * chosen
        self.indices = torch.zeros(ROWS * chosen, dtype=torch.int32, device=device)
        self.last = torch.full((ROWS,), PAGE_SIZE, dtype=torch.int32, device=device)
        self.streams = [torch.cuda.Stream() for _ in range(parts)]
        num_sms = torch.cuda.get_device_properties(0).multi_processor_count
        self.tiles = step_tiles(choose_tiles(self.rows, num_sms, PAGE_SIZE), chosen)
        self.scratch = [
            PagedDecodeScratch.allocate(self.rows, GROUP, HEAD_DIM, self.tiles.splits, device)
            for _ in range(parts)
        ]
        self.wrappers = []
        if attention == "flashinfer":  # as FlashInferBackend configures it: graph mode, HND, tensor cores
            import flashinfer

            for part in range(parts):
                rows = slice(part * self.rows, (part + 1) * self.rows + 1)
                part_indptr = self.indptr[rows] - self.indptr[part * self.rows]
                wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                    torch.zeros(128 * 2**20, dtype=torch.uint8, device=device),
                    "HND",
                    use_cuda_graph=True,
                    use_tensor_cores=True,
                    paged_kv_indptr_buffer=part_indptr.clone(),
                    paged_kv_indices_buffer=self.indices[part * self.rows * chosen :],
                    paged_kv_last_page_len_buffer=self.last[: self.rows].clone(),
                )
                wrapper.plan(
                    part_indptr.cpu(), self.indices[: self.rows * chosen], self.last[: self.rows].cpu(),
                    GROUP, 1, HEAD_DIM, PAGE_SIZE, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16,
                )  # fmt: skip
                self.wrappers.append(wrapper)

    def run_part(self, layer: Layer, part: int) -> None:
        rows = slice(part * self.rows, (part + 1) * self.rows)
        indptr = self.indptr[part * self.rows : (part + 1) * self.rows + 1]
        self.scores = quest_scores(layer.q[rows], layer.bounds, layer.table[rows], self.held[rows])
        self._select(layer, rows, self.scores, indptr)
        self._attend(layer, rows, indptr, part)

    def _select(self, layer: Layer, rows: slice, scores: torch.Tensor, indptr: torch.Tensor) -> None:
        table = layer.table[rows]
        select_pages(scores, self.count[rows], table, table[:, -1], None, indptr, self.indices)

    def _attend(self, layer: Layer, rows: slice, indptr: torch.Tensor, part: int) -> None:
        if self.attention == "flashinfer":
            layer.out[rows] = self.wrappers[part].run(layer.q[rows], (layer.k, layer.v))
        else:
            paged_decode(
                layer.q[rows], layer.k, layer.v, indptr, self.indices, self.last[rows],
                self.scratch[part], self.tiles, out=layer.out[rows],
            )  # fmt: skip

    def kernel(self, name: str, index: int) -> None:
        """One of the layer's three kernels alone over every row (``parts=1``): ``scores``,
        ``select`` (over the scores of the last :meth:`layer` call) or ``attention`` (over its
        selection)."""
        layer, rows = self.layers[index], slice(0, ROWS)
        if name == "scores":
            self.scores = quest_scores(layer.q, layer.bounds, layer.table, self.held)
        elif name == "select":
            self._select(layer, rows, self.scores, self.indptr)
        else:
            self._attend(layer, rows, self.indptr, 0)

    def layer(self, index: int) -> None:
        """One layer: part p's scoring after part p - 1's, each part on its stream, joined."""
        layer = self.layers[index]
        main = torch.cuda.current_stream()
        if self.parts == 1:
            self.run_part(layer, 0)
            return
        ready = torch.cuda.Event()
        ready.record(main)
        scored: list[torch.cuda.Event] = []
        for part, stream in enumerate(self.streams):
            stream.wait_event(ready if part == 0 else scored[-1])
            with torch.cuda.stream(stream):
                rows = slice(part * self.rows, (part + 1) * self.rows)
                indptr = self.indptr[part * self.rows : (part + 1) * self.rows + 1]
                scores = quest_scores(layer.q[rows], layer.bounds, layer.table[rows], self.held[rows])
                done = torch.cuda.Event()
                done.record(stream)
                scored.append(done)
                self._select(layer, rows, scores, indptr)
                self._attend(layer, rows, indptr, part)
        for stream in self.streams:
            main.wait_stream(stream)


class Chain:
    """The layer as one persistent kernel (:func:`~lil_sparse.kernels.quest_chain.quest_chain`)
    with the given stage lags."""

    def __init__(self, layers: list[Layer], spec: str) -> None:
        """``spec``: ``lag_select/lag_attend`` then optional ``/warps/programs_per_sm/block_pages/
        score_block/stages/attend_pages`` (defaults: :func:`chain_shape`'s)."""
        device = torch.device("cuda")
        self.layers = layers
        num_sms = torch.cuda.get_device_properties(0).multi_processor_count
        values = [int(v) for v in spec.split("/")]
        if not 2 <= len(values) <= 8:
            raise ValueError(f"--chain {spec}: lag_select/lag_attend and up to six more numbers")
        names = ("warps", "programs_per_sm", "block_pages", "score_block", "stages", "attend_pages")
        tiles = dict(zip(names, values[2:], strict=False))
        self.shape = chain_shape(CHOSEN, num_sms, values[0], values[1], **tiles)
        self.scratch = QuestChainScratch.allocate(
            ROWS, SLOTS, GROUP, HEAD_DIM, self.shape.attend_items, device
        )
        self.held = torch.full((ROWS,), SLOTS, dtype=torch.long, device=device)
        self.count = torch.full((ROWS,), CHOSEN - 1, dtype=torch.long, device=device)
        self.last = torch.full((ROWS,), PAGE_SIZE, dtype=torch.int32, device=device)

    def layer(self, index: int) -> None:
        layer = self.layers[index]
        quest_chain(
            layer.q, layer.bounds, layer.table, self.held, self.count, layer.table[:, -1], self.last,
            layer.k, layer.v, self.scratch, self.shape, out=layer.out,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parts", default="1,2,4")
    parser.add_argument("--attention", default="flashinfer,triton")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--breakdown",
        default="",
        help="comma list of chosen pages per row (e.g. 64,128,256,512): time each kernel alone there",
    )
    parser.add_argument(
        "--chain",
        default="",
        help="also the persistent chain kernel: comma list of lag_select/lag_attend[/warps/programs_per_sm/"
        "block_pages/score_block/stages/attend_pages] (e.g. 4/12,8/20/4/3)",
    )
    args = parser.parse_args()
    settle_cuda_graphs()
    bandwidth = copy_bandwidth_gbs()
    layers = [Layer(seed) for seed in range(args.layers)]
    floor_bytes = ROWS * SLOTS * 2 * HEAD_DIM * 2 + ROWS * CHOSEN * 2 * PAGE_SIZE * HEAD_DIM * 2
    floor_us = floor_bytes / (bandwidth * 1e3)
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {bandwidth:.0f} GB/s; "
          f"floor per layer {floor_us:.1f} us (bounds + chosen K/V, bf16)", flush=True)  # fmt: skip
    if args.breakdown:
        breakdown(layers, args, bandwidth)
        return
    variants: list[tuple[str, int, Variant | Chain]] = [
        (attention, parts, Variant(parts, attention, layers))
        for attention in args.attention.split(",")
        for parts in (int(p) for p in args.parts.split(","))
    ]
    for spec in filter(None, args.chain.split(",")):
        variants.append((f"chain {spec}", 1, Chain(layers, spec)))
    reference: dict[str, torch.Tensor] = {}
    diffs = {}
    for attention, parts, variant in variants:
        variant.layer(0)
        torch.cuda.synchronize()
        out = layers[0].out.float().clone()
        reference.setdefault("first", out)  # the first variant's output
        diffs[attention, parts] = (out - reference["first"]).abs().max().item()
    times: dict[tuple[str, int], list[float]] = {key[:2]: [] for key in variants}
    for _ in range(args.rounds):  # variants alternate within a round
        for attention, parts, variant in variants:
            times[attention, parts].append(graph_us(variant.layer, args.layers, args.iters))
    for (attention, parts), runs in times.items():
        median = statistics.median(runs)
        print(
            f"{attention} parts={parts}: {median:.1f} us per layer ({median / floor_us:.2f}x floor); "
            f"rounds {', '.join(f'{t:.1f}' for t in runs)}; "
            f"max |diff| vs the first variant {diffs[attention, parts]:.4f}",
            flush=True,
        )


def breakdown(layers: list[Layer], args: argparse.Namespace, bandwidth: float) -> None:
    """Each kernel alone (one stream, every row) at each chosen page count: where the serial
    layer's time goes, and the attention's time against its pages (its fixed part: the
    intercept of a line through them)."""
    for chosen in (int(c) for c in args.breakdown.split(",")):
        kv_us = ROWS * chosen * 2 * PAGE_SIZE * HEAD_DIM * 2 / (bandwidth * 1e3)
        bounds_us = ROWS * SLOTS * 2 * HEAD_DIM * 2 / (bandwidth * 1e3)
        for attention in args.attention.split(","):
            variant = Variant(1, attention, layers, chosen)
            variant.layer(0)
            cells = []
            for name in ("scores", "select", "attention", "chain"):
                fn = variant.layer if name == "chain" else functools.partial(variant.kernel, name)
                runs = [graph_us(fn, args.layers, args.iters) for _ in range(args.rounds)]
                cells.append(f"{name} {statistics.median(runs):.1f}")
            print(
                f"chosen {chosen} {attention}: "
                + ", ".join(cells)
                + f" us per layer (floors: K/V {kv_us:.1f} us, bounds {bounds_us:.1f} us)",
                flush=True,
            )


if __name__ == "__main__":
    main()
