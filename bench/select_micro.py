"""Kernel time of the fused page selection (:mod:`lil_sparse.kernels.page_select`) against
``torch.topk`` plus the gathers it replaces, per variant and warp count (CUDA events, median
of ``--iters`` replays of a CUDA graph of 20 calls; inputs shaped like one layer of a decode step: ``rows``
(sequence, KV head) rows of ``width`` slots, an eighth of them selected). Variants: ``bisect``
(32 one-bit passes), ``radix4`` (four 8-bit radix passes, ``early_exit=False``) and ``radix``
(the default: radix passes until the selected set is settled, ``early_exit=True``).

``--flashinfer`` adds FlashInfer's ``top_k_page_table_transform`` (its radix top-k fused with
the page-table gather, several CTAs per row), timed alone: without the copy into the CSR page
list and the newest page that the fused kernel's figure includes, so a lower bound for it.

    python bench/select_micro.py [--rows 64,16,2] [--widths 2048,2304,256] [--iters 200]
        [--variants bisect,radix4,radix] [--warps 1,2,4,8] [--flashinfer]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial

import torch

from bench.common import cuda_ms
from lil_sparse.kernels.page_scores import _launch
from lil_sparse.kernels.page_select import select_pages

VARIANTS = {"bisect": (False, False), "radix4": (True, False), "radix": (True, True)}  # (radix, early_exit)


@dataclass
class Case:
    scores: torch.Tensor
    count: torch.Tensor
    table: torch.Tensor
    indptr: torch.Tensor
    indices: torch.Tensor

    @classmethod
    def build(cls, rows: int, width: int) -> Case:
        scores = torch.randn(rows, width, device="cuda")
        scores[:, -1] = float("-inf")
        count = torch.full((rows,), width // 8 - 1, dtype=torch.long, device="cuda")
        table = torch.randperm(rows * width, device="cuda").view(rows, width).int()
        indptr = torch.arange(rows + 1, device="cuda", dtype=torch.int32) * (width // 8)
        return cls(scores, count, table, indptr, torch.empty(rows * width, dtype=torch.int32, device="cuda"))

    def check_variants_agree(self, variants: list[str]) -> None:
        """Every variant writes the same pages (a benchmark of a wrong kernel is worthless)."""
        written = []
        for name in variants:
            self.indices.fill_(-1)
            self.fused(*VARIANTS[name], 0)
            written.append(self.indices.clone())
        if any(not torch.equal(written[0], other) for other in written[1:]):
            raise RuntimeError(
                f"select_micro: {variants} wrote different pages at {tuple(self.scores.shape)}"
            )

    def torch_path(self) -> None:
        top = torch.topk(self.scores, self.scores.shape[1] // 8 - 1, dim=1, sorted=False).indices
        chosen = torch.cat([self.table.gather(1, top), self.table[:, -1:]], dim=1)
        self.indices[: chosen.numel()] = chosen.reshape(-1)

    def flashinfer_transform(self) -> torch.Tensor:
        """FlashInfer's fused radix top-k + page-table gather (``top_k_page_table_transform``,
        multi-CTA per row) over the older slots: ``[rows, count]`` page ids, unordered, not yet
        in the CSR page list nor followed by the newest page."""
        import flashinfer

        k = self.scores.shape[1] // 8 - 1
        return flashinfer.top_k_page_table_transform(self.scores, self.table, self.lengths, k)

    def check_flashinfer_agrees(self) -> None:
        """FlashInfer's pages, as sets per row, are the fused kernel's older pages."""
        self.fused(True, True, 8)
        k = self.scores.shape[1] // 8 - 1
        ours = self.indices[: self.scores.shape[0] * (k + 1)].view(-1, k + 1)[:, :k]
        theirs = self.flashinfer_transform()
        if not torch.equal(ours.sort(dim=1).values, theirs.sort(dim=1).values):
            raise RuntimeError(f"select_micro: FlashInfer's pages differ at {tuple(self.scores.shape)}")

    @property
    def lengths(self) -> torch.Tensor:
        """Slots each row ranks: all but the newest (scored -inf)."""
        rows, width = self.scores.shape
        return torch.full((rows,), width - 1, dtype=torch.int32, device=self.scores.device)

    def fused(self, radix: bool, early_exit: bool, warps: int) -> None:
        newest = self.table[:, -1]
        select_pages(
            self.scores,
            self.count,
            self.table,
            newest,
            None,
            self.indptr,
            self.indices,
            radix=radix,
            num_warps=warps,
            early_exit=early_exit,
        )


def timed_us(fn, iters: int, launches: int = 20) -> float:
    """Kernel time per call: ``launches`` calls captured in one CUDA graph (no launch overhead,
    as in a decode step's graph), replayed ``iters`` times; the median replay / ``launches``."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(launches):
            fn()
    return cuda_ms(graph.replay, iters=iters, warmup=1) * 1e3 / launches


def score_variants(rows: int, width: int, iters: int) -> str:
    """Quest scoring (bf16 bounds, group 4, head_dim 128) per block size and warp count."""
    pages = rows * width
    bounds = torch.randn(pages + 1, 2, 128, device="cuda", dtype=torch.bfloat16)
    table = torch.randperm(pages, device="cuda").view(rows, width).int()
    q = torch.randn(rows, 4, 128, device="cuda", dtype=torch.bfloat16)
    held = torch.full((rows,), width, device="cuda", dtype=torch.long)  # every slot but the newest scores
    ideal = rows * width * 2 * 128 * 2 / 4.2e12 * 1e6
    parts = [f"quest scores rows {rows} width {width} (bounds at 4.2 TB/s: {ideal:.1f} us)"]
    for block in (16, 32, 64, 128):
        for warps in (2, 4, 8):
            fn = partial(_launch, q, bounds, table, held, True, block, warps)
            parts.append(f"{block}/{warps}w {timed_us(fn, iters):5.1f}")
    return " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default="64,16,2")
    parser.add_argument(
        "--widths", default="2048,2304,256", help="slots per row, each >= 8 (any, not only powers of two)"
    )
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="of " + ", ".join(VARIANTS))
    parser.add_argument("--warps", default="1,2,4,8")
    parser.add_argument("--scores", action="store_true", help="also time the Quest scoring kernel")
    parser.add_argument(
        "--flashinfer", action="store_true", help="also time FlashInfer's top_k_page_table_transform"
    )
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"--variants: unknown {sorted(unknown)}, known: {', '.join(VARIANTS)}")
    print(f"device: {torch.cuda.get_device_name()}")
    if args.scores:
        print(score_variants(64, 2048, args.iters), flush=True)
        print(score_variants(2, 256, args.iters), flush=True)
    for rows in (int(r) for r in args.rows.split(",")):
        for width in (int(w) for w in args.widths.split(",")):
            case = Case.build(rows, width)
            case.check_variants_agree(variants)
            baseline = timed_us(case.torch_path, args.iters)
            line = [f"rows {rows:3d} width {width:5d}: topk+gather {baseline:6.1f} us"]
            for name in variants:
                for warps in (int(w) for w in args.warps.split(",")):
                    fn = partial(case.fused, *VARIANTS[name], warps)
                    line.append(f"{name}/{warps}w {timed_us(fn, args.iters):6.1f}")
            if args.flashinfer:
                case.check_flashinfer_agrees()
                line.append(f"flashinfer transform {timed_us(case.flashinfer_transform, args.iters):6.1f}")
            print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
