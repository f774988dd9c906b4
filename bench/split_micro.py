"""FlashInfer decode of a batch of very unequal rows: one call against the backend's two calls.

The rows of the 8B mixed batch at 32k (6 full sequences beside 24 sparse ones, 8 KV heads each):
48 rows of 2049 pages and 192 of 257, bf16, head_dim 128, page size 16, group 4, on random pages
of one cache. Times the backend's own decode (``FlashInferBackend.decode``) eagerly and replayed
in a CUDA graph, with ``split_calls`` off (one call) and on (``choose_split``'s two calls),
against the bandwidth floor (K and V bytes of the attended pages / copy bandwidth, same run).
Medians of ``--iters`` CUDA-event timings. Writes a markdown table (``--out``).

    python bench/split_micro.py --out docs/bench/split_micro.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import copy_bandwidth_gbs, cuda_ms, write_markdown
from lil_sparse.attention.flashinfer_backend import FlashInferBackend
from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.config import EngineConfig
from lil_sparse.models.config import ModelConfig

PAGE_SIZE, HEAD_DIM, GROUP, KV_HEADS = 16, 128, 4, 8


def backend(split_calls: bool) -> FlashInferBackend:
    config = EngineConfig(model="bench", device="cuda", backend="flashinfer", page_size=PAGE_SIZE)
    model = ModelConfig(
        architecture="llama",
        vocab_size=16,
        hidden_size=GROUP * KV_HEADS * HEAD_DIM,
        intermediate_size=16,
        num_layers=1,
        num_heads=GROUP * KV_HEADS,
        num_kv_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        rope_theta=1e4,
        rms_norm_eps=1e-6,
        max_position_embeddings=65536,
        tie_word_embeddings=False,
        attention_bias=False,
    )
    return FlashInferBackend(config, model, use_tensor_cores=True, split_calls=split_calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--long", default="48x2049", help="rows x pages of the long rows")
    parser.add_argument("--short", default="192x257", help="rows x pages of the short rows")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    (long_rows, long_pages), (short_rows, short_pages) = (
        tuple(int(v) for v in spec.split("x")) for spec in (args.long, args.short)
    )
    counts = [long_pages] * long_rows + [short_pages] * short_rows
    total = sum(counts)
    gen = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(total + 1, 1, PAGE_SIZE, HEAD_DIM, device="cuda", generator=gen).bfloat16()
    v = torch.randn(k.shape, device="cuda", generator=gen).bfloat16()
    q = torch.randn(len(counts), GROUP, HEAD_DIM, device="cuda", generator=gen).bfloat16()
    pages = torch.randperm(total, device="cuda", generator=gen).int()
    page_ids = torch.zeros(len(counts), long_pages, dtype=torch.int32, device="cuda")
    start = 0
    for row, count in enumerate(counts):
        page_ids[row, :count] = pages[start : start + count]
        start += count
    last = torch.full((len(counts),), PAGE_SIZE, dtype=torch.int32, device="cuda")
    layout = DecodeLayout.build(counts, last, tuple(last.tolist()))
    bandwidth = copy_bandwidth_gbs()
    floor_us = total * PAGE_SIZE * HEAD_DIM * 2 * 2 / (bandwidth * 1e9) * 1e6  # as decode_e2e's floor
    rows = []
    for split_calls in (False, True):
        attn = backend(split_calls)
        attn.begin_decode_step([layout])

        def step(attn: FlashInferBackend = attn) -> torch.Tensor:
            return attn.decode(0, q, k, v, page_ids, layout)

        eager_us = cuda_ms(step, iters=args.iters) * 1e3
        graph = torch.cuda.CUDAGraph()
        step()
        with torch.cuda.graph(graph):
            step()
        graph_us = cuda_ms(graph.replay, iters=args.iters) * 1e3
        split = attn.step_key([layout])[0]
        name = f"two calls (split at row {split})" if split else "one call"
        rows.append([name, f"{eager_us:.1f}", f"{graph_us:.1f}", f"{graph_us / floor_us:.2f}"])
        print(f"{name}: eager {eager_us:.1f} us, graph {graph_us:.1f} us, floor {floor_us:.1f} us")
    if args.out:
        write_markdown(
            args.out,
            "Decode of very unequal rows: one FlashInfer call against two",
            [
                f"rows: {long_rows} x {long_pages} pages and {short_rows} x {short_pages} pages, bf16, "
                f"head_dim {HEAD_DIM}, page size {PAGE_SIZE}, group {GROUP}, tensor-core decode",
                f"floor: K and V bytes of the attended pages (bf16) / the copy bandwidth "
                f"({bandwidth:.0f} GB/s, read + write, as bench/decode_e2e.py): {floor_us:.1f} us",
                f"medians of {args.iters} CUDA-event timings",
            ],
            ["decode", "eager us", "CUDA graph us", "graph / floor"],
            rows,
        )


if __name__ == "__main__":
    main()
