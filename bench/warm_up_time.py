"""How long the start-up warm-up takes at long contexts, on an empty Triton cache.

The warm-up (lil_sparse/engine/warm_up.py) runs the fused selection kernels at every page-table
width bucket of the context (``selection_compile``), and each bucket past 256 pages can be new
Triton specializations: a 32k context has 7 such buckets, a 128k one 31. The Helm chart's startup
probe gives a pod 600 s (``probes.startup``) before it is restarted. This measures the engine's
construction (weights, the sampler's warm-up, the warm-up) at each context, every context in its
own process with an empty ``TRITON_CACHE_DIR``, as on a machine that never ran the engine.

The model is a random-weight Qwen2 folder with the 1.5B shape's attention (hidden 1536, 12 query
and 2 KV heads of 128 dims, so the same kernel specializations as DeepScaleR-1.5B) but
``--layers`` layers and a 384-token vocabulary: the kernels built do not depend on the layer
count, the time the warm-up's requests take does (a little: its prompts are at most 256 pages).
FlashInfer's JIT cache is one empty folder shared by the processes, so the first process (the
``--prime`` context) pays its builds and the others do not: its row is the whole first start of a
fresh machine at that context, the others are what the context adds in Triton builds.

    python bench/warm_up_time.py [--contexts 32768,131072] [--prime 4096] [--layers 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.common import run_with_empty_caches


def child(model: str, context: int) -> dict:
    """In this process: build the engine with the warm-up on at ``context`` tokens, return times."""
    import torch

    from lil_sparse.config import EngineConfig
    from lil_sparse.engine import LLMEngine

    start = time.perf_counter()
    engine = LLMEngine.from_config(
        EngineConfig(
            model=model,
            device="cuda",
            dtype="bfloat16",
            guardian_workers=0,
            max_model_len=context,
            kv_cache_tokens=context,
            warm_up=True,
        )
    )
    torch.cuda.synchronize()
    built = time.perf_counter() - start
    report = engine.warm_up_report
    engine.close()
    if report is None:
        raise RuntimeError("warm_up_time: the engine ran no warm-up")
    triton_dir = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    return {
        "context": context,
        "build_s": built,
        "warm_up_s": report.seconds,
        "requests": report.requests,
        "widths": list(report.widths),
        "selection_widths": list(report.selection_widths),
        "triton_kernels": sum(1 for _ in triton_dir.glob("*/*.cubin")),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


def run_context(model_root: Path, context: int, layers: int, flashinfer_base: str) -> dict:
    """:func:`child` in a subprocess with an empty Triton cache and the shared FlashInfer one."""
    from lil_sparse.testing.tiny_model import build_tiny_model

    model = build_tiny_model(
        model_root / f"ctx{context}",
        architecture="qwen2",
        num_layers=layers,
        hidden_size=1536,
        num_heads=12,
        num_kv_heads=2,
        max_position_embeddings=context,
    )
    argv = [__file__, "--child", str(model), "--child-context", str(context)]
    return run_with_empty_caches(argv, flashinfer_base)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contexts", default="32768,131072", help="comma list of contexts (tokens)")
    parser.add_argument(
        "--prime", type=int, default=4096, help="first context, pays FlashInfer's JIT (0: none)"
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-context", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.child_context)))
        return
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    contexts = ([args.prime] if args.prime else []) + [int(c) for c in args.contexts.split(",")]
    rows, device = [], ""
    with tempfile.TemporaryDirectory() as model_root, tempfile.TemporaryDirectory() as flashinfer_base:
        for index, context in enumerate(contexts):
            r = run_context(Path(model_root), context, args.layers, flashinfer_base)
            device = f"{r['device']}, torch {r['torch']}"
            jit = "yes" if index == 0 else "no (cached)"
            line = (
                f"| {context} | {jit} | {r['build_s']:.1f} | {r['warm_up_s']:.1f} | {r['requests']} "
                f"| {len(r['widths'])} | {len(r['selection_widths'])} | {r['triton_kernels']} |"
            )
            print(
                f"context {context}: engine built in {r['build_s']:.1f} s, warm-up {r['warm_up_s']:.1f} s, "
                f"{r['requests']} requests, {len(r['selection_widths'])} selection widths, "
                f"{r['triton_kernels']} Triton kernels built (FlashInfer JIT: {jit})",
                flush=True,
            )
            rows.append(line)
    if args.out:
        lines = [
            f"## {started}: warm-up time by context",
            "",
            f"- device: {device}",
            f"- command: `python bench/warm_up_time.py --contexts {args.contexts} --prime {args.prime} "
            f"--layers {args.layers}`",
            f"- model: random-weight Qwen2, hidden 1536, 12 / 2 heads of 128 dims, {args.layers} layers; "
            "each context in its own process with an empty Triton cache, FlashInfer's JIT cache shared "
            "(built by the first row); one run each (a fresh cache is a one-off)",
            "",
            "| context | FlashInfer JIT | engine built s | of it warm-up s | warm-up requests "
            "| request widths | selection widths | Triton kernels built |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
