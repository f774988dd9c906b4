"""Prefill fairness: how long a running stream stalls while a long prompt is prefilled.

One stream decodes (greedy, EOS ignored). After ``--warmup-tokens`` of its tokens a second request
arrives with a ``--prompt-tokens`` prompt (4096 by default). The engine steps until that request
has its first token and the stream has produced ``--after-tokens`` more. Reported per mode
(chunked prefill with the step token budget, and unchunked: the whole prompt in one step):

- the long request's prefill time (arrival to first token) and how many chunks it took;
- the stream's tokens produced while the prompt was prefilling;
- the stream's median inter-token gap over its whole run and before the prompt arrived (its
  undisturbed decode step), its longest gap, and the longest gap against each median.

On a shared machine decode steps slow down when other work runs, so the median over the whole
run is the figure to compare, the one before arrival the baseline.

A benchmark, not a test: the test (tests/engine/test_chunked_prefill.py) counts the tokens produced
between chunks. Appends one section per run to ``--out``:

    OMP_NUM_THREADS=2 python bench/prefill_fairness.py [--device cuda] \
        [--modes chunked,chunked:128,unchunked] [--out docs/bench/prefill_fairness.md]

``chunked`` uses the device's default step budget (512 on CPU, 2048 on CUDA), ``chunked:N`` a
budget of N tokens.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.options import RequestOptions, StoppingOptions

STREAM_PROMPT = "Write a long story about a lighthouse keeper and the storm that changed the island."
FILLER = (
    "The committee reviewed every section of the annual report, compared the figures with the "
    "previous year and wrote down each question that the board should answer before the vote. "
)


@dataclass(frozen=True)
class Result:
    mode: str
    budget: int
    prefill_seconds: float
    chunks: int
    stream_tokens_during_prefill: int
    median_gap_ms: float
    median_gap_before_ms: float
    max_gap_ms: float

    def row(self) -> list[str]:
        budget = str(self.budget) if self.budget else "-"
        return [
            self.mode,
            budget,
            f"{self.prefill_seconds:.2f}",
            str(self.chunks),
            str(self.stream_tokens_during_prefill),
            f"{self.median_gap_ms:.1f}",
            f"{self.median_gap_before_ms:.1f}",
            f"{self.max_gap_ms:.1f}",
            f"{self.max_gap_ms / self.median_gap_ms:.1f}",
            f"{self.max_gap_ms / self.median_gap_before_ms:.1f}",
        ]


HEADER = [
    "mode",
    "step budget (tokens)",
    "long prompt prefill (s)",
    "chunks",
    "stream tokens during prefill",
    "stream median gap (ms)",
    "median gap before arrival (ms)",
    "stream longest gap (ms)",
    "longest / median",
    "longest / median before",
]


def long_prompt(engine: LLMEngine, length: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < length:
        ids.extend(engine.tokenizer.encode(FILLER))
    return ids[:length]


def greedy(max_new_tokens: int) -> RequestOptions:
    return RequestOptions(stopping=StoppingOptions(max_new_tokens=max_new_tokens, ignore_eos=True))


def measure(engine: LLMEngine, args: argparse.Namespace, mode: str) -> Result:
    stream_budget = args.warmup_tokens + args.after_tokens + args.prompt_tokens  # never runs out
    stream = engine.add_request(engine.tokenizer.encode(STREAM_PROMPT), greedy(stream_budget))
    stream_times: list[float] = []
    while len(stream_times) < args.warmup_tokens:
        events = engine.step()
        count = sum(len(e.token_ids) for e in events if e.request_id == stream)
        stream_times += [time.perf_counter()] * count
    arrival = time.perf_counter()
    gaps_before = [b - a for a, b in itertools.pairwise(stream_times)]
    long_id = engine.add_request(long_prompt(engine, args.prompt_tokens), greedy(1))
    long_seq = engine._sequences[long_id]  # read-only: how many chunks its prompt took
    first_token_at = 0.0
    during = after = 0
    chunks = 0
    while after < args.after_tokens:
        events = engine.step()
        now = time.perf_counter()
        chunks = max(chunks, long_seq.num_prefill_chunks)
        count = sum(len(e.token_ids) for e in events if e.request_id == stream)
        stream_times += [now] * count
        if first_token_at:
            after += count
        else:
            during += count
        if not first_token_at and any(e.request_id == long_id and e.token_ids for e in events):
            first_token_at = now
    engine.abort(stream)
    while engine.has_unfinished():
        engine.step()
    gaps = [b - a for a, b in itertools.pairwise(stream_times)]
    return Result(
        mode,
        engine.scheduler.step_token_budget,
        first_token_at - arrival,
        chunks,
        during,
        statistics.median(gaps) * 1e3,
        statistics.median(gaps_before) * 1e3,
        max(gaps) * 1e3,
    )


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
        f"OMP_NUM_THREADS={threads}, torch threads {torch.get_num_threads()}, torch {torch.__version__}"
    )


def report(args: argparse.Namespace, results: list[Result], model_name: str, backend: str) -> str:
    lines = [
        f"## {args.device}: {args.prompt_tokens}-token prompt while one stream decodes",
        "",
        f"- device: {device_description(args.device)}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `{' '.join(['python', *sys.argv])}`",
        f"- model: {model_name}, backend {backend}, page size {args.page_size}",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(r.row()) + " |" for r in results),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--warmup-tokens", type=int, default=16)
    parser.add_argument("--after-tokens", type=int, default=16)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--modes", default="chunked,unchunked", help="chunked, chunked:BUDGET, unchunked")
    parser.add_argument("--out", type=Path, default=None, help="append the section to this markdown file")
    args = parser.parse_args()
    results = []
    model_name = backend = ""
    for mode in args.modes.split(","):
        name, _, budget = mode.partition(":")
        if name not in ("chunked", "unchunked"):
            raise SystemExit(f"--modes: expected chunked, chunked:BUDGET or unchunked, got {mode!r}")
        config = EngineConfig(
            model=args.model,
            device=args.device,
            page_size=args.page_size,
            kv_cache_tokens=2 * (args.prompt_tokens + 1024),
            max_model_len=args.prompt_tokens + 1024,
            guardian_workers=0,
            chunked_prefill=name == "chunked",
            max_num_batched_tokens=int(budget or 0),
        )
        engine = LLMEngine.from_config(config)
        model_name, backend = engine.info.model_name, engine.info.backend
        measure(engine, argparse.Namespace(**{**vars(args), "prompt_tokens": 64}), name)  # warm-up
        results.append(measure(engine, args, name))
        engine.close()
        print(" | ".join(results[-1].row()), flush=True)
    section = report(args, results, model_name, backend)
    print(section)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            handle.write("\n" + section)


if __name__ == "__main__":
    main()
