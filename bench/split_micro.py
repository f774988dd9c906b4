"""FlashInfer decode of a batch of very unequal rows run as one call or split into two.

For each layout (rows x pages, e.g. the 8B mixed batch at 32k: 6 full sequences beside 24
sparse ones, 8 KV heads each, is ``48x2049+192x257``) the backend's decode
(``FlashInferBackend.decode``: bf16, head_dim 128, page size 16, group 4, tensor-core kernel, on
random pages of one cache) is timed eagerly and replayed in a CUDA graph for these splits: one
call; a split at each drop in page count (the candidates ``choose_split`` weighs) and the
``--extra`` splits; the line of ``choose_split``'s pick says so. Each line gives the cost model's prediction
(``decode_split.call_cost`` in page units x one page's K and V at 1/num_sms of the copy
bandwidth) beside the measurement, and
the bandwidth floor (K and V bytes / copy bandwidth, same run). Each split runs its two calls one
after the other and at once (``concurrent_split``: the second on a stream of its own). Medians of ``--iters``
CUDA-event timings. Writes a markdown table (``--out``).

    python bench/split_micro.py --out docs/bench/split_micro.md
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from bench.common import copy_bandwidth_gbs, cuda_ms, settle_cuda_graphs, write_markdown
from lil_sparse.attention import flashinfer_backend
from lil_sparse.attention.decode_split import call_cost, choose_split
from lil_sparse.attention.flashinfer_backend import FlashInferBackend
from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.config import EngineConfig
from lil_sparse.testing.attention_shapes import attention_model_config

PAGE_SIZE, HEAD_DIM, GROUP, KV_HEADS = 16, 128, 4, 8
MIN_CHUNK = max(128 // PAGE_SIZE, 1)


def backend(concurrent: bool) -> FlashInferBackend:
    config = EngineConfig(model="bench", device="cuda", backend="flashinfer", page_size=PAGE_SIZE)
    model = attention_model_config(GROUP * KV_HEADS, KV_HEADS, HEAD_DIM, max_positions=65536)
    # FlashInfer's calls only: a layout of few short rows would otherwise run the Triton decode.
    return FlashInferBackend(
        config, model, use_tensor_cores=True, concurrent_split=concurrent, fast_decode=False
    )


def parse_layout(spec: str) -> list[int]:
    counts: list[int] = []
    for part in spec.split("+"):
        rows, pages = (int(v) for v in part.split("x"))
        counts.extend([pages] * rows)
    return counts


def splits_to_try(counts: list[int], extra: list[int]) -> list[int]:
    """One call (0), a split at each drop in page count, and ``extra``."""
    drops = [r for r in range(KV_HEADS, len(counts), KV_HEADS) if counts[r - KV_HEADS] > counts[r]]
    return list(dict.fromkeys([0, *drops, *(split for split in extra if 0 < split < len(counts))]))


def time_layout(
    counts: list[int], iters: int, bandwidth: float, extra: list[int], rows_out: list[list[str]]
) -> None:
    total = sum(counts)
    gen = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(total + 1, 1, PAGE_SIZE, HEAD_DIM, device="cuda", generator=gen).bfloat16()
    v = torch.randn(k.shape, device="cuda", generator=gen).bfloat16()
    q = torch.randn(len(counts), GROUP, HEAD_DIM, device="cuda", generator=gen).bfloat16()
    pages = torch.randperm(total, device="cuda", generator=gen).int()
    page_ids = torch.zeros(len(counts), max(counts), dtype=torch.int32, device="cuda")
    offsets = [0]
    for count in counts:
        offsets.append(offsets[-1] + count)
    for row, count in enumerate(counts):  # bench set-up, not a hot path
        page_ids[row, :count] = pages[offsets[row] : offsets[row + 1]]
    last = torch.full((len(counts),), PAGE_SIZE, dtype=torch.int32, device="cuda")
    layout = DecodeLayout.build(counts, last, tuple(last.tolist()))
    page_bytes = PAGE_SIZE * HEAD_DIM * 2 * 2
    floor_us = total * page_bytes / (bandwidth * 1e9) * 1e6  # as decode_e2e's floor
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    unit_us = page_bytes / (bandwidth * 1e9 / num_sms) * 1e6  # one page unit of the model
    shape = "+".join(f"{counts.count(n)}x{n}" for n in dict.fromkeys(counts))
    chosen = choose_split(counts, KV_HEADS, num_sms, MIN_CHUNK)
    for split, concurrent in [
        (s, c) for s in splits_to_try(counts, extra) for c in (False, True)[: 1 + bool(s)]
    ]:
        # The bench forces each split through the backend's own planning path (a fresh backend:
        # a backend keeps its plan while the page counts stay).
        flashinfer_backend.choose_split = lambda *_args, split=split: split
        attn = backend(concurrent)
        attn.begin_decode_step([layout])
        assert attn.step_key([layout]) == (split,)

        def step(attn: FlashInferBackend = attn) -> torch.Tensor:
            return attn.decode(0, q, k, v, page_ids, layout)

        eager_us = cuda_ms(step, iters=iters) * 1e3
        graph = torch.cuda.CUDAGraph()
        step()
        with torch.cuda.graph(graph):
            step()
        graph_us = cuda_ms(graph.replay, iters=iters) * 1e3
        bounds = (0, split, len(counts)) if split else (0, len(counts))
        predicted = (
            sum(call_cost(counts[a:b], num_sms, MIN_CHUNK) for a, b in itertools.pairwise(bounds)) * unit_us
        )
        name = f"two calls{' at once' if concurrent else ''}, split at row {split}" if split else "one call"
        name += " (choose_split's pick)" if split == chosen else ""
        rows_out.append(
            [
                shape,
                name,
                f"{predicted:.0f}",
                f"{eager_us:.1f}",
                f"{graph_us:.1f}",
                f"{graph_us / floor_us:.2f}",
            ]
        )
        print(
            f"{shape} {name}: predicted {predicted:.0f} us, eager {eager_us:.1f}, graph {graph_us:.1f}, "
            f"floor {floor_us:.1f}",
            flush=True,
        )
    flashinfer_backend.choose_split = choose_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layouts", default="48x2049+192x257,48x2049+192x257+16x1,192x257")
    parser.add_argument("--extra", default="32,40", help="more split rows to time, e.g. '32,40'")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    settle_cuda_graphs()
    bandwidth = copy_bandwidth_gbs()
    rows: list[list[str]] = []
    for spec in args.layouts.split(","):
        extra = [int(v) for v in args.extra.split(",") if v]
        time_layout(parse_layout(spec), args.iters, bandwidth, extra, rows)
    if args.out:
        write_markdown(
            args.out,
            "Decode of very unequal rows: one FlashInfer call against two",
            [
                f"bf16, head_dim {HEAD_DIM}, page size {PAGE_SIZE}, group {GROUP}, tensor-core decode, "
                f"rows are (sequence, KV head) pairs of {KV_HEADS} KV heads",
                f"copy bandwidth {bandwidth:.0f} GB/s (read + write); floor = K and V bytes / it, "
                "as bench/decode_e2e.py",
                "predicted: the cost model of lil_sparse/attention/decode_split.py",
                f"medians of {args.iters} CUDA-event timings",
            ],
            ["rows x pages", "decode", "predicted us", "eager us", "CUDA graph us", "graph / floor"],
            rows,
        )


if __name__ == "__main__":
    main()
