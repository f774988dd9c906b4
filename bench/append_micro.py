"""Kernel time of a decode step's RoPE + K/V append (:mod:`lil_sparse.kernels.rotary_append`),
with and without the Quest/InfLLM key-metadata update, on the benchmark shapes.

A step runs this kernel once per layer; with a Quest or InfLLM request in the step it also folds
each new key into its page's min, max, fp32 sum and mean. Each figure is the median of
``--iters`` replays of a CUDA graph of one call per layer (``LAYERS`` layers, each on its own
cache, as a step), divided by the number of calls. Rows: tokens (the batch) x (query heads + KV
heads) of the 1.5B (12 + 2) and 8B (32 + 8) shapes, head_dim 128, pages of 16 tokens.

    python bench/append_micro.py [--iters 50] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import settle_cuda_graphs, write_markdown
from bench.linear_timing import graph_us
from lil_sparse.kernels.rotary_append import rotary_append_decode_kv
from lil_sparse.kv.key_metadata import KeyMetadata

HEAD_DIM = 128
PAGE_SIZE = 16
LAYERS = 28
CASES = [  # (shape, query heads, KV heads, tokens)
    ("qwen1.5b b1", 12, 2, 1),
    ("qwen1.5b b8", 12, 2, 8),
    ("qwen1.5b b32", 12, 2, 32),
    ("llama8b b1", 32, 8, 1),
    ("llama8b b8", 32, 8, 8),
    ("llama8b b32", 32, 8, 32),
]


class Case:
    """``LAYERS`` layers of pages and metadata, and one step's inputs; each row its own page."""

    def __init__(self, q_heads: int, k_heads: int, tokens: int, seed: int = 0) -> None:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        pages = tokens * k_heads * 4
        cache = (LAYERS, pages, 1, PAGE_SIZE, HEAD_DIM)
        self.k_cache = torch.zeros(cache, dtype=torch.bfloat16, device="cuda")
        self.v_cache = torch.zeros(cache, dtype=torch.bfloat16, device="cuda")
        self.bounds = torch.randn(LAYERS, pages, 2, HEAD_DIM, generator=gen, device="cuda").to(torch.bfloat16)
        self.key_sum = torch.randn(LAYERS, pages, HEAD_DIM, generator=gen, device="cuda")
        self.key_mean = self.key_sum.to(torch.bfloat16)
        heads = q_heads + k_heads
        self.q_heads = q_heads
        self.qk = torch.randn(LAYERS, tokens, heads, HEAD_DIM, generator=gen, device="cuda").to(
            torch.bfloat16
        )
        self.v = torch.randn(LAYERS, tokens, k_heads, HEAD_DIM, generator=gen, device="cuda").to(
            torch.bfloat16
        )
        angles = torch.rand(tokens, HEAD_DIM // 2, generator=gen, device="cuda")
        self.cos, self.sin = angles.cos(), angles.sin()
        page = torch.randperm(pages, generator=gen, device="cuda")[: tokens * k_heads].view(tokens, k_heads)
        self.slots = page * PAGE_SIZE + 3

    def run(self, layer: int, metadata: bool, kernel=rotary_append_decode_kv) -> None:
        meta = (
            KeyMetadata(self.bounds[layer], self.key_sum[layer], self.key_mean[layer]) if metadata else None
        )
        kernel(
            self.qk[layer], self.q_heads, self.cos, self.sin, self.v[layer], self.k_cache[layer],
            self.v_cache[layer], meta, self.slots,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    settle_cuda_graphs()
    table = []
    for name, q_heads, k_heads, tokens in CASES:
        case = Case(q_heads, k_heads, tokens)
        plain = graph_us(lambda layer: case.run(layer, False), LAYERS, args.iters)  # noqa: B023
        meta = graph_us(lambda layer: case.run(layer, True), LAYERS, args.iters)  # noqa: B023
        table.append(
            [name, tokens * (q_heads + k_heads), f"{plain:.2f}", f"{meta:.2f}", f"{meta - plain:+.2f}"]
        )
        print(" | ".join(str(c) for c in table[-1]), flush=True)
    if args.out:
        write_markdown(
            args.out,
            "RoPE + K/V append per layer, with and without the key metadata",
            [f"median of {args.iters} replays of a CUDA graph of {LAYERS} calls (one per layer), per call"],
            ["shape", "heads in the step", "no metadata (us)", "with metadata (us)", "metadata adds (us)"],
            table,
        )


if __name__ == "__main__":
    main()
