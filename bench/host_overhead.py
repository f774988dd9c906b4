"""Host overhead of ``LLMEngine.step()``: per-step wall time with a model whose forward is negligible.

A tiny random-weight model (``--layers`` layers, hidden size 64, vocabulary 384) runs on the CPU
with the reference backend, so a decode step's time is almost all host work: scheduler, page
manager, runner bookkeeping (layouts, policy groups), sampler setup, detokenizer, stop checks and
Guardian driver. For each policy and batch size, ``batch`` requests with ``--prompt-tokens``-token
prompts are prefilled, then ``--steps`` decode steps of the whole batch are timed after
``--warmup`` steps. The sparse policies run with a budget below the prompt (``--budget-tokens``),
so selection and eviction work is part of every step. Greedy, or with ``--sampled`` temperature
0.8, top-k 40 and top-p 0.95 (every request seeded).

Prints one line per (policy, batch) with the median and p90 step time and the median step time
outside the model forward (``host``: the step minus the time spent in the model's ``forward`` and
``compute_logits``, the part a CUDA graph does not replace) and the median time in the per-token
handling (``tokens``: ``LLMEngine._append_token`` over the batch: detokenizer, stop checks, Guardian
driver, events), and with ``--profile N`` the top ``N`` functions by own time (cProfile over the
timed steps of each cell). ``--repeats R`` runs each cell R times (a fresh engine each) and prints
the median of the R medians with their range, the run-to-run noise.

    OMP_NUM_THREADS=1 python bench/host_overhead.py [--policies full,sink,h2o,quest,infllm] \
        [--batches 1,8,64] [--steps 60] [--repeats 1] [--sampled] [--profile 15] \
        [--markdown docs/bench/host_overhead.md]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.options import POLICY_NAMES, RequestOptions, SamplingOptions, SparseOptions, StoppingOptions
from lil_sparse.testing.tiny_model import build_tiny_model


def make_engine(model_dir: Path, batch: int, prompt_tokens: int, new_tokens: int) -> LLMEngine:
    pages_per_request = -(-(prompt_tokens + new_tokens) // 16) + 1
    return LLMEngine.from_config(
        EngineConfig(
            model=str(model_dir),
            device="cpu",
            dtype="float32",
            backend="reference",
            kv_cache_tokens=max(4096, batch * pages_per_request * 16),
            max_batch_size=batch,
            guardian_workers=0,
            cuda_graphs=False,
        )
    )


class Clock:
    """Accumulates the wall time spent in the wrapped methods of ``owner``."""

    def __init__(self, owner: object, names: tuple[str, ...]) -> None:
        self.seconds = 0.0
        for name in names:
            setattr(owner, name, self.timed(getattr(owner, name)))

    def timed(self, function):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return call


def cell(
    model_dir: Path, policy: str, batch: int, args: argparse.Namespace
) -> tuple[list[float], list[float], list[float], str]:
    """Step times, step-minus-forward times and per-token handling times (seconds) of
    ``args.steps`` decode steps of the whole batch, and the profile."""
    # Requests admitted first decode while later ones prefill: a margin keeps them all running.
    new_tokens = args.warmup + args.steps + 64
    engine = make_engine(model_dir, batch, args.prompt_tokens, new_tokens)
    gen = torch.Generator().manual_seed(batch)
    sampling = (
        SamplingOptions(temperature=0.8, top_k=40, top_p=0.95, seed=1) if args.sampled else SamplingOptions()
    )
    options = RequestOptions(
        sampling=sampling,
        stopping=StoppingOptions(max_new_tokens=new_tokens, ignore_eos=True),
        sparse=SparseOptions(
            policy=policy, budget_tokens=args.budget_tokens, sink_tokens=16, dense_layers=args.layers // 2
        ),
    )
    for _ in range(batch):
        engine.add_request(torch.randint(3, 384, (args.prompt_tokens,), generator=gen).tolist(), options)
    while engine.scheduler.num_waiting or engine.scheduler.num_prefilling:  # prefill every request
        engine.step()
    for _ in range(args.warmup):
        engine.step()
    profiler = cProfile.Profile() if args.profile else None
    clock = Clock(engine.runner.model, ("forward", "compute_logits"))
    token_clock = Clock(engine, ("_append_token",))  # the instance attribute shadows the method
    times, host, tokens = [], [], []
    for _ in range(args.steps):
        if profiler is not None:
            profiler.enable()
        clock.seconds = token_clock.seconds = 0.0
        start = time.perf_counter()
        events = engine.step()
        times.append(time.perf_counter() - start)
        host.append(times[-1] - clock.seconds)
        tokens.append(token_clock.seconds)
        if profiler is not None:
            profiler.disable()
        if len(events) != batch or engine.scheduler.num_running != batch:
            raise RuntimeError(f"step ran {len(events)} of {batch} requests: not a whole-batch step")
    engine.close()
    text = ""
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.profile)
        text = out.getvalue()
    return times, host, tokens, text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policies", default=",".join(POLICY_NAMES))
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=120)
    parser.add_argument("--budget-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell (median of medians, range)")
    parser.add_argument(
        "--sampled", action="store_true", help="temperature 0.8, top-k 40, top-p 0.95 (default greedy)"
    )
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions by own time")
    parser.add_argument("--sort", default="tottime", help="profile order: tottime or cumulative")
    parser.add_argument("--markdown", type=Path, default=None, help="append a results section here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "tiny", num_layers=args.layers)
        for policy in args.policies.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                runs = [cell(model_dir, policy, batch, args) for _ in range(args.repeats)]
                medians = [[statistics.median(values) * 1e3 for values in run[:3]] for run in runs]
                median, host_ms, tokens_ms = (
                    statistics.median(column) for column in zip(*medians, strict=True)
                )
                spread = [f"{min(column):.3f}-{max(column):.3f}" for column in zip(*medians, strict=True)]
                p90 = statistics.median(sorted(r[0])[int(0.9 * (len(r[0]) - 1))] for r in runs) * 1e3
                rows.append((policy, batch, median, p90, host_ms, tokens_ms))
                print(
                    f"step {policy} batch {batch}: {median:.3f} ms median, p90 {p90:.3f} ms, "
                    f"host (outside the forward) {host_ms:.3f} ms median, "
                    f"tokens (per-token handling) {tokens_ms:.3f} ms median"
                    + (f"; range over {args.repeats} runs: {', '.join(spread)}" if args.repeats > 1 else ""),
                    flush=True,
                )
                for run in runs:
                    if run[3]:
                        print(run[3], flush=True)
    if args.markdown is not None:
        lines = [
            "",
            f"## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
            "",
            f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
            f"- command: `{' '.join(['python', *sys.argv])}`",
            "",
            "| policy | batch | step median ms | step p90 ms | host (outside the forward) median ms "
            "| per-token handling median ms |",
            "|---|---|---|---|---|---|",
            *(f"| {p} | {b} | {m:.3f} | {q:.3f} | {h:.3f} | {t:.3f} |" for p, b, m, q, h, t in rows),
            "",
        ]
        with args.markdown.open("a") as out:
            out.write("\n".join(lines))


if __name__ == "__main__":
    main()
