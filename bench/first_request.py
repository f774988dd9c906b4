"""A fresh machine's first requests, with and without the engine's start-up warm-up.

On CUDA the first use of each kernel builds it (FlashInfer's nvcc JIT, Triton's compiler) and
the runner captures a CUDA graph the second time it sees a step shape: without a warm-up, the
first requests pay for all of it (lil_sparse/engine/warm_up.py). Each variant runs in its own
process with empty FlashInfer and Triton caches (``FLASHINFER_WORKSPACE_BASE`` and
``TRITON_CACHE_DIR`` set to new folders), as on a machine that never ran the engine:

1. build the engine (load the model, the sampler's warm-up, and the warm-up when on);
2. one greedy request, policy ``full``; then the same prompt under ``quest``; then four
   ``full`` requests at once. Per request: TTFT (its arrival to its first token) and its
   longest gap between two tokens.

    python bench/first_request.py --model /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf [--out FILE]

Prints one line per variant and request; ``--out`` writes a markdown section (device, date,
command). One run of each variant: a fresh cache is a one-off, so there is no median to take.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.common import run_with_empty_caches

PROMPT_TOKENS = 500
NEW_TOKENS = 64
ROUNDS = (("full", 1), ("quest", 1), ("full", 4))  # (policy, requests at once)


def child(model: str, warm_up: bool) -> dict:
    """In a fresh process: build the engine, run :data:`ROUNDS`, return the timings."""
    import torch

    from lil_sparse.config import EngineConfig
    from lil_sparse.engine import LLMEngine
    from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions

    start = time.perf_counter()
    engine = LLMEngine.from_config(
        EngineConfig(model=model, device="cuda", guardian_workers=0, max_batch_size=8, warm_up=warm_up)
    )
    torch.cuda.synchronize()
    built = time.perf_counter() - start
    vocab = engine.model_config.vocab_size
    prompt = [(11 + 104729 * i) % vocab for i in range(PROMPT_TOKENS)]
    rounds = []
    for policy, count in ROUNDS:
        options = RequestOptions(
            stopping=StoppingOptions(max_new_tokens=NEW_TOKENS, ignore_eos=True),
            sparse=SparseOptions(policy=policy, budget_tokens=256),
        )
        arrival = time.perf_counter()
        ids = [engine.add_request(prompt, options) for _ in range(count)]
        last = {request_id: arrival for request_id in ids}
        ttft: dict[str, float] = {}
        gaps = {request_id: 0.0 for request_id in ids}
        while engine.has_unfinished():
            for event in engine.step():
                now = time.perf_counter()
                if not event.token_ids:
                    continue
                if event.request_id not in ttft:
                    ttft[event.request_id] = now - arrival
                else:
                    gaps[event.request_id] = max(gaps[event.request_id], now - last[event.request_id])
                last[event.request_id] = now
        rounds.append(
            {
                "policy": policy,
                "requests": count,
                "ttft_s": max(ttft.values()),
                "longest_gap_s": max(gaps.values()),
                "seconds": time.perf_counter() - arrival,
            }
        )
    report = engine.warm_up_report
    engine.close()
    return {
        "warm_up": warm_up,
        "build_s": built,
        "warm_up_s": report.seconds if report is not None else 0.0,
        "rounds": rounds,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }


def run_variant(model: str, warm_up: bool) -> dict:
    """:func:`child` in a subprocess with empty kernel caches."""
    return run_with_empty_caches([__file__, "--model", model, "--child", "on" if warm_up else "off"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--variants", default="off,on", help="warm-up off, on, in this order")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.child == "on")))
        return
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows, device = [], ""
    for variant in args.variants.split(","):
        result = run_variant(args.model, variant == "on")
        device = f"{result['device']}, torch {result['torch']}"
        built, warm = result["build_s"], result["warm_up_s"]
        print(f"warm-up {variant}: engine built in {built:.1f} s (warm-up {warm:.1f} s)")
        for r in result["rounds"]:
            print(
                f"  {r['policy']} x{r['requests']}: TTFT {r['ttft_s'] * 1e3:.0f} ms, longest gap "
                f"{r['longest_gap_s'] * 1e3:.0f} ms, {r['seconds']:.2f} s"
            )
            rows.append(
                f"| {variant} | {built:.1f} | {warm:.1f} | {r['policy']} x{r['requests']} "
                f"| {r['ttft_s'] * 1e3:.0f} | {r['longest_gap_s'] * 1e3:.0f} | {r['seconds']:.2f} |"
            )
        sys.stdout.flush()
    if args.out:
        lines = [
            f"## {started}: {Path(args.model).name}",
            "",
            f"- device: {device}",
            f"- command: `python bench/first_request.py --model {args.model}`",
            f"- each variant in its own process with empty FlashInfer and Triton caches; prompt "
            f"{PROMPT_TOKENS} tokens, {NEW_TOKENS} new tokens, greedy, in the order below",
            "",
            "| warm-up | engine built s | of it warm-up s | requests | TTFT ms | longest gap ms | seconds |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
