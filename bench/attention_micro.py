"""Attention and selection microbenchmark: one decode layer on the FlashInfer backend.

For Llama-3.1-8B (32/8 heads) and Qwen2-1.5B (12/2) layer shapes, head_dim 128, page size 16,
contexts 4k-32k, batch 1-64 and Quest budgets 256-4096 tokens, it times (CUDA events, median):

- dense attention over every page, and block-sparse attention over the budget's pages;
- Quest selection as the engine runs it per layer: page bounds from min/max metadata, top-k,
  gather of page ids and the CSR rewrite of the planned indices buffer;
- both decode kernels (CUDA cores and tensor cores) for the dense case.

KV read GB/s counts the K and V bytes of the attended pages; the copy bandwidth is measured in
the same run. Writes docs/bench/attention_micro.md.

    python bench/attention_micro.py [--quick] [--out docs/bench/attention_micro.md]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from bench.common import copy_bandwidth_gbs, cuda_ms, verdict, write_markdown
from lil_sparse.attention.flashinfer_backend import CUDA_CORE_GROUPS, FlashInferBackend
from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.config import EngineConfig
from lil_sparse.kv import KVCache
from lil_sparse.policies import POLICIES, PolicyBatch
from lil_sparse.testing.attention_shapes import attention_model_config

PAGE_SIZE = 16
HEAD_DIM = 128
SHAPES = {"llama3.1-8b": (32, 8), "qwen2-1.5b": (12, 2)}


def backend_for(num_heads: int, num_kv_heads: int, tensor_cores: bool, max_context: int) -> FlashInferBackend:
    config = EngineConfig(model="bench", device="cuda", backend="flashinfer", page_size=PAGE_SIZE)
    model_config = attention_model_config(num_heads, num_kv_heads, HEAD_DIM, max_positions=max_context)
    # FlashInfer's kernels only: batch 1 at 4k would otherwise time the Triton decode in both the
    # CUDA-core and the tensor-core columns (bench/paged_decode_micro.py times that one).
    return FlashInferBackend(config, model_config, use_tensor_cores=tensor_cores, fast_decode=False)


def one_case(
    kv: KVCache, table: torch.Tensor, q: torch.Tensor, backend: FlashInferBackend, budget: int | None
):
    """Times for one layer. Returns (selection ms, attention ms, attended pages)."""
    rows, held = table.shape
    last = torch.full((rows,), PAGE_SIZE, dtype=torch.int32, device="cuda")
    count = held if budget is None else min(held, budget // PAGE_SIZE)
    layout = DecodeLayout.build([count] * rows, last, (PAGE_SIZE,) * rows)
    backend.begin_decode_step([layout])
    if budget is None:
        page_ids = table
        backend.pack_indices(page_ids, layout)
        select_ms = 0.0
    else:
        full = lambda v: torch.full((rows,), v, dtype=torch.long, device="cuda")  # noqa: E731
        batch = PolicyBatch(
            rows=torch.arange(rows, device="cuda"),
            table=table,
            held=full(held),
            select_count=full(count),
            sink_pages=full(0),
            recent_pages=full(1),
            dense_layers=full(0),
            max_select=count,
            num_kv_heads=rows,
            layout=layout,
        )
        quest = POLICIES["quest"]
        holder: list[torch.Tensor] = []

        def select() -> None:
            older = table.gather(1, quest.select_slots(0, q, batch, kv))
            page_ids = torch.cat([older, table[:, -1:]], dim=1)
            backend.pack_indices(page_ids, layout)
            holder[:] = [page_ids]

        select_ms = cuda_ms(select)
        page_ids = holder[0]
    attend_ms = cuda_ms(lambda: backend.decode(0, q, kv.k[0], kv.v[0], page_ids, layout))
    return select_ms, attend_ms, rows * count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small grid, for a smoke run")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/attention_micro.md"))
    args = parser.parse_args()
    contexts = [4096, 32768] if args.quick else [4096, 8192, 16384, 32768]
    batches = [1, 32] if args.quick else [1, 8, 32, 64]
    budgets = [1024] if args.quick else [256, 1024, 4096]
    bandwidth = copy_bandwidth_gbs()
    print(f"copy bandwidth (read + write): {bandwidth:.0f} GB/s", flush=True)
    page_bytes = 2 * PAGE_SIZE * HEAD_DIM * 2  # K and V, bf16
    rows_out: list[list] = []
    shares: list[tuple[float, str]] = []
    for (name, (heads, kv_heads)), context, batch in itertools.product(SHAPES.items(), contexts, batches):
        group = heads // kv_heads
        rows = batch * kv_heads
        held = context // PAGE_SIZE
        kv = KVCache(1, rows * held, PAGE_SIZE, HEAD_DIM, torch.bfloat16, torch.device("cuda"))
        kv.k.normal_()
        kv.v.normal_()
        kv.key_min.normal_().sub_(1.0)
        kv.key_max.normal_().add_(1.0)
        table = torch.randperm(rows * held, device="cuda").view(rows, held).int()
        q = torch.randn(rows, group, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        kernels = (False, True) if group in CUDA_CORE_GROUPS else (True,)
        backends = {tc: backend_for(heads, kv_heads, tc, context) for tc in kernels}
        dense = {tc: one_case(kv, table, q, backends[tc], None)[1] for tc in kernels}
        dense.setdefault(False, float("inf"))
        best_tc = dense[True] < dense[False]
        first_row = len(rows_out)
        dense_gbs = rows * held * page_bytes / (dense[best_tc] * 1e-3) / 1e9
        rows_out.append(
            [
                name,
                context,
                batch,
                "dense",
                f"{dense[False]:.3f}",
                f"{dense[True]:.3f}",
                "-",
                f"{dense[best_tc]:.3f}",
                f"{dense_gbs:.0f}",
                "-",
            ]
        )
        for budget in budgets:
            if budget >= context:
                continue
            select_ms, attend_ms, pages = one_case(kv, table, q, backends[best_tc], budget)
            gbs = pages * page_bytes / (attend_ms * 1e-3) / 1e9
            share = select_ms / (select_ms + attend_ms)
            shares.append((share, f"{name} ctx {context} batch {batch} budget {budget}"))
            rows_out.append(
                [
                    name,
                    context,
                    batch,
                    budget,
                    "-",
                    "-",
                    f"{select_ms:.3f}",
                    f"{attend_ms:.3f}",
                    f"{gbs:.0f}",
                    f"{100 * share:.0f}%",
                ]
            )
        for row in rows_out[first_row:]:
            print(" | ".join(str(c) for c in row), flush=True)
        del kv, table, q, backends
        torch.cuda.empty_cache()
    worst = max(shares)
    notes = [
        f"copy bandwidth measured in this run: {bandwidth:.0f} GB/s (bytes read + written)",
        "attention ms: the faster kernel for dense rows; sparse rows use the kernel that won dense",
        "selection: Quest bounds from fp32 min/max metadata + top-k + page-id gather + CSR rewrite",
        verdict(
            "selection <= 15% of selection + attention",
            worst[0] <= 0.15,
            f"worst {100 * worst[0]:.0f}% at {worst[1]}; median "
            f"{100 * sorted(s for s, _ in shares)[len(shares) // 2]:.0f}%",
        ),
    ]
    header = [
        "shape",
        "context",
        "batch",
        "budget",
        "dense ms (cuda cores)",
        "dense ms (tensor cores)",
        "selection ms",
        "attention ms",
        "KV read GB/s",
        "selection share",
    ]
    write_markdown(args.out, "Attention and selection microbenchmark", notes, header, rows_out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
