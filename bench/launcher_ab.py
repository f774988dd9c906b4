"""Direct Triton launches on and off: a warm engine's time to first token and its eager decode step.

``lil_sparse/kernels/launcher.py`` launches a compiled Triton kernel directly once it has seen the
specialization; with ``launcher.ENABLED`` off every launch goes through Triton's JIT (argument
binding and the cache key in Python). Prefill and eager decode steps launch a few Triton kernels
per layer, so for a small model their time is mostly the host's launches.

In one process, one warm engine per CUDA-graph setting: per round, each arm (the order alternates
by round) times

- ``ttft P``: one greedy request with a prompt of about ``P`` tokens, from ``add_request`` to its
  first token (``max_new_tokens=1``); each prompt's tokens differ, and with ``--vary on`` (the
  default) so does its length (``P`` less 0-31 tokens, by the number of prompts before it), as
  a server's prompts do: a prefill's kernels launch on a grid that follows the length, so a
  launch cache keyed by the grid would miss on nearly every one;
- ``decode``: with ``cuda_graphs=False``, the median of one request's decode steps
  (``engine.step()`` to ``engine.step()``) over ``--steps`` tokens.

Prints one line per arm and figure (median of ``--rounds`` rounds, with their spread) and the
on/off ratio; ``--json`` writes every round; ``--profile N`` prints cProfile's top ``N`` (by
cumulative and by own time) for one TTFT at the longest prompt and for the eager decode steps,
launcher on.

    python bench/launcher_ab.py MODEL [--prompts 128,512,2048] [--rounds 7] [--json FILE]
    python bench/launcher_ab.py --summarize FILE
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import pstats
import statistics
import time
from pathlib import Path

import torch

from bench.common import run_header
from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.kernels import launcher
from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions

ARMS = ("on", "off")


def _prompt(vocab: int, tokens: int, seed: int) -> list[int]:
    return [(11 + 104729 * (i + 7919 * seed)) % vocab for i in range(tokens)]


def _options(new_tokens: int) -> RequestOptions:
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=new_tokens, ignore_eos=True),
        sparse=SparseOptions(policy="full"),
    )


def ttft_s(engine: LLMEngine, prompt: list[int]) -> float:
    """Seconds from ``add_request`` to the request's first token (the engine otherwise idle)."""
    arrival = time.perf_counter()
    request_id = engine.add_request(prompt, _options(1))
    first = 0.0
    while engine.has_unfinished():
        for event in engine.step():
            if event.request_id == request_id and event.token_ids and not first:
                first = time.perf_counter() - arrival
    return first


def decode_step_s(engine: LLMEngine, prompt: list[int], steps: int) -> float:
    """Median seconds between one request's tokens over ``steps`` decode steps."""
    engine.add_request(prompt, _options(steps + 1))
    stamps = []
    while engine.has_unfinished():
        if any(event.token_ids for event in engine.step()):
            stamps.append(time.perf_counter())
    return statistics.median(b - a for a, b in itertools.pairwise(stamps[1:]))  # [0]: prefill


def profile(engine: LLMEngine, graphs: bool, prompt: list[int], steps: int, top: int) -> None:
    """cProfile's top ``top`` functions (cumulative, then own time) over a TTFT (graphs) or decode steps."""
    profiler = cProfile.Profile()
    profiler.enable()
    if graphs:
        ttft_s(engine, prompt)
    else:
        decode_step_s(engine, prompt[:64], steps)
    profiler.disable()
    print(f"cProfile, {'ttft' if graphs else 'eager decode'}, launcher on:")
    for order in ("cumulative", "tottime"):
        pstats.Stats(profiler).sort_stats(order).print_stats(top)


def summarize(rounds: dict[str, dict[str, list[float]]]) -> dict[str, dict]:
    """Per figure: each arm's median and range (ms), off / on, and the rounds paired (an arm's two
    runs of one round ran back to back): in how many "on" was faster and the median of off - on."""
    summary = {}
    for name in rounds["on"]:
        on, off = (statistics.median(rounds[arm][name]) for arm in ARMS)
        spread = {arm: (min(rounds[arm][name]), max(rounds[arm][name])) for arm in ARMS}
        pairs = list(zip(rounds["on"][name], rounds["off"][name], strict=True))
        wins = sum(b > a for a, b in pairs)
        paired = statistics.median(b - a for a, b in pairs)
        summary[name] = {
            "on_ms": on, "off_ms": off, "off_over_on": off / on, "spread_ms": spread,
            "on_faster_rounds": wins, "rounds": len(pairs), "median_paired_saving_ms": paired,
        }  # fmt: skip
        print(
            f"launcher {name}: on {on:.2f} ms ({spread['on'][0]:.2f}-{spread['on'][1]:.2f}), "
            f"off {off:.2f} ms ({spread['off'][0]:.2f}-{spread['off'][1]:.2f}); off/on {off / on:.3f}; "
            f"on faster in {wins} of {len(pairs)} rounds, median paired saving {paired:.2f} ms"
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="the model (not with --summarize)")
    parser.add_argument("--summarize", type=Path, help="earlier runs: a --json file or {'runs': [...]}")
    parser.add_argument("--prompts", default="128,512,2048")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--vary", choices=("on", "off"), default="on", help="a new length per prompt")
    parser.add_argument("--steps", type=int, default=32, help="decode steps per eager-decode figure")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run (the interpreter takes the JIT)")
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's top N after the rounds")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.summarize:
        data = json.loads(args.summarize.read_text())
        for run in data.get("runs", [data]):  # one run's --json, or a file of several
            print(json.dumps(run["header"]))
            summarize(run["rounds"])
        return
    if not args.model:
        parser.error("a model is needed (or --summarize FILE)")
    prompts = [int(p) for p in args.prompts.split(",")]
    header = run_header() if args.device == "cuda" else {"device": "cpu (dry run)"}
    print(json.dumps(header))
    rounds: dict[str, dict[str, list[float]]] = {arm: {} for arm in ARMS}
    seed = 0
    for graphs in (True, False):
        engine = LLMEngine.from_config(
            EngineConfig(
                model=str(args.model),
                device=args.device,
                guardian_workers=0,
                max_batch_size=8,
                cuda_graphs=graphs,
            )
        )
        vocab = engine.model_config.vocab_size
        for r in range(args.rounds + 1):  # round 0 warms both arms and is dropped
            for arm in ARMS if r % 2 else ARMS[::-1]:
                launcher.ENABLED = arm == "on"
                figures: dict[str, float] = {}
                if graphs:
                    for tokens in prompts:
                        seed += 1
                        length = tokens - seed % 32 if args.vary == "on" else tokens
                        figures[f"ttft {tokens}"] = ttft_s(engine, _prompt(vocab, length, seed))
                else:
                    seed += 1
                    figures["eager decode step"] = decode_step_s(engine, _prompt(vocab, 64, seed), args.steps)
                if r:
                    for name, seconds in figures.items():
                        rounds[arm].setdefault(name, []).append(seconds * 1e3)
        launcher.ENABLED = True
        if args.profile:
            profile(engine, graphs, _prompt(vocab, prompts[-1], seed + 1), args.steps, args.profile)
        engine.close()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    summary = summarize(rounds)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rounds": rounds, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
