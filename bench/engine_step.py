"""Time between tokens of ``LLMEngine.step()`` end to end (scheduler, runner, sampler,
detokenizer, stop checks) on a real model: the speed-T1 measurement.

Greedy, policy ``full``, CUDA graphs on, ``ignore_eos``; the prompt is prefilled first, then
every decode step is timed with the host clock (a step ends with the sampled tokens on the host,
so no extra synchronisation is needed). Reports the median over the timed steps.

``--overlap on`` (the engine's CUDA default) launches decode step n+1 before a step handles step
n's tokens, so a timed step is the steady-state period between tokens with the host work hidden
behind the GPU; ``off`` runs steps serially; ``both`` reports one line per mode. ``--pdl``
likewise launches the Triton kernels with programmatic dependent launch (``on``, as the engine),
without (``off``) or both, alternately in one process (:mod:`lil_sparse.kernels.pdl`).
``--record-kernel`` does the same for the all-greedy step's host record: ``on`` (the engine)
takes it from the argmax's own kernel (:func:`~lil_sparse.kernels.row_argmax.greedy_record`),
``off`` samples and then stacks the tokens and logprobs (:class:`StackingSampler`, the engine
before 2026-12-01 19:10 UTC). ``--host-reuse`` likewise for the eager work's host reuse: ``on``
(the engine) launches the eager Triton kernels' compiled binaries directly
(:mod:`lil_sparse.kernels.launcher`) and has the argmax's kernel write each step's record into a
reused pinned buffer, with a reused event (:class:`~lil_sparse.engine.step_sampler.HostRecords`,
:meth:`~lil_sparse.sampling.Sampler.sample_record`); ``off`` launches through Triton's JIT,
writes the record on the device and copies it into a fresh pinned buffer with a fresh event every
step (the engine before 2026-12-01 21:00 UTC).

``--repeats N`` builds N engines per configuration, the configurations taking turns (round 1 of
every configuration, then round 2, ...), and reports the median of their medians with each
engine's figure: one engine's median had varied between processes and with its place in the
process (SmolLM2 batch 1: 0.52-1.14 ms in the report runs of 2026-12-01; the first engines of a
process read slow), so a single engine's figure decided speed-T1 by its luck.

    python bench/engine_step.py MODEL.gguf [--batches 1,8,64] [--steps 64] [--overlap on|off|both]
        [--pdl on|off|both] [--record-kernel on|off|both] [--host-reuse on|off|both] [--repeats 3]
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.common import host_launch_us, run_header, settle_cuda_graphs
from bench.decode_e2e import graph_alone_ms
from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.engine.step_sampler import HostLanding, HostRecords, TokensInFlight
from lil_sparse.kernels import launcher, pdl
from lil_sparse.loading import load_model
from lil_sparse.options import RequestOptions, StoppingOptions
from lil_sparse.sampling import Sampler, SamplingParams, host_record

ON_OFF = {"on": [True], "off": [False], "both": [True, False]}  # a switch's choice -> its settings
WARMUP_STEPS = 16  # first decode steps: graph captures and FlashInfer JIT


class StackingSampler(Sampler):
    """The engine's sampler with the host record made the way it was before the argmax's record
    kernel: :meth:`Sampler.sample`, then two casts and a stack."""

    def sample_record(
        self,
        logits: torch.Tensor,
        params: SamplingParams,
        positions: torch.Tensor,
        host: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        token_ids, logprobs = self.sample(logits, params, positions)
        return token_ids, host_record(token_ids, logprobs)


class FreshRecords(HostRecords):
    """A new pinned buffer and CUDA event for every step's record (the engine before
    :class:`HostRecords`)."""

    def take(self, rows: int) -> HostLanding:
        return HostLanding(torch.empty((2, rows), dtype=torch.float64, pin_memory=True), torch.cuda.Event())


def timed_waits(engine: LLMEngine) -> list[float]:
    """Time every ``StepSampler.wait`` of ``engine`` (seconds, appended to the returned list):
    how long each step's host waited for its tokens, i.e. for the GPU."""
    waits: list[float] = []
    wait = engine.step_sampler.wait

    def timed(tokens: TokensInFlight) -> tuple[list[int], list[float]]:
        start = time.perf_counter()
        try:
            return wait(tokens)
        finally:
            waits.append(time.perf_counter() - start)

    engine.step_sampler.wait = timed  # type: ignore[method-assign]
    return waits


def greedy_engine(model_path: Path, batch: int, steps: int, overlap: bool = True) -> LLMEngine:
    """An engine over the GGUF at ``model_path`` (bf16, FlashInfer, CUDA graphs, no Guardian
    threads, no start-up warm-up) holding ``batch`` greedy ``full`` requests of the same prompt,
    each allowed ``WARMUP_STEPS + steps`` and a few more new tokens (``ignore_eos``)."""
    loaded = load_model(model_path, torch.bfloat16, "cuda")
    config = EngineConfig(
        model=str(model_path),
        device="cuda",
        dtype="bfloat16",
        backend="flashinfer",
        kv_cache_tokens=max(8192, batch * 1024),
        max_batch_size=batch,
        guardian_workers=0,
        cuda_graphs=True,
        overlap_scheduling=overlap,
        # The step is timed after warm-up steps of its own shape; the start-up warm-up (every
        # policy, width and batch size) would only lengthen each engine's construction.
        warm_up=False,
    )
    engine = LLMEngine(loaded, config)
    prompt = loaded.tokenizer.encode("Please reason step by step: what is 17 times 23?")
    options = RequestOptions(
        stopping=StoppingOptions(max_new_tokens=WARMUP_STEPS + steps + 8, ignore_eos=True)
    )
    for _ in range(batch):
        engine.add_request(prompt, options)
    return engine


def engine_tbt_ms(
    model_path: Path,
    batch: int,
    steps: int,
    overlap: bool,
    record_kernel: bool = True,
    host_reuse: bool = True,
) -> dict:
    """Median ``LLMEngine.step()`` time in ms over ``steps`` decode steps at ``batch`` requests,
    with overlap scheduling on or off, the greedy record from the argmax's kernel or not, and the
    eager work's host reuse on or off (``launcher.ENABLED`` is set here for the engine's run)."""
    engine = greedy_engine(model_path, batch, steps, overlap)
    if not record_kernel:
        engine.sampler = StackingSampler()
    if not host_reuse:
        engine.step_sampler.host_records = FreshRecords()
        engine.sampler.writes_host.clear()  # the record on the device, then a copy
    launcher.ENABLED = host_reuse
    waits = timed_waits(engine)
    host_probe = host_launch_us(torch.device("cuda"))  # this engine's host speed, just before
    times: list[float] = []
    while engine.has_unfinished() and len(times) < WARMUP_STEPS + steps:
        running = engine.scheduler.num_running
        start = time.perf_counter()
        engine.step()
        elapsed = time.perf_counter() - start
        if running == batch:  # a decode step of the whole batch (prefill steps admit requests)
            times.append(elapsed)
    launcher.ENABLED = True
    graph_ms = graph_alone_ms(engine.runner)
    stats = engine.runner.graph_stats()
    overlap_stats = engine.overlap_stats()
    engine.close()
    timed = times[WARMUP_STEPS:]
    return {
        "batch": batch,
        "overlap": overlap,
        "steps": len(timed),
        "tbt_ms": statistics.median(timed) * 1e3,
        "p90_ms": sorted(timed)[int(0.9 * (len(timed) - 1))] * 1e3,
        "graphs": stats,
        "overlap_stats": overlap_stats,
        "record_kernel": record_kernel,
        "host_reuse": host_reuse,
        "host_probe_us": round(host_probe, 3),
        # Where the step's time went: the host waiting for the tokens' copy (the GPU's share
        # beyond the host's), and the step's graph replayed alone (its GPU time).
        "wait_ms": statistics.median(waits[-len(timed) :]) * 1e3 if timed else None,
        "graph_alone_ms": graph_ms,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--overlap", choices=("on", "off", "both"), default="on")
    parser.add_argument("--pdl", choices=("on", "off", "both"), default="on")
    parser.add_argument("--record-kernel", choices=("on", "off", "both"), default="on")
    parser.add_argument("--host-reuse", choices=("on", "off", "both"), default="on")
    parser.add_argument("--repeats", type=int, default=3, help="engines per configuration")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    modes, pdl_modes, record_modes, reuse_modes = (
        ON_OFF[choice] for choice in (args.overlap, args.pdl, args.record_kernel, args.host_reuse)
    )
    settle_cuda_graphs()  # every timed graph replays as in a long-running process
    configs = [
        (batch, overlap, with_pdl, with_record, with_reuse)
        for batch in (int(b) for b in args.batches.split(","))
        for overlap in modes
        for with_pdl in pdl_modes
        for with_record in record_modes
        for with_reuse in reuse_modes
    ]
    runs: dict[tuple[int, bool, bool, bool, bool], list[dict]] = {config: [] for config in configs}
    for _ in range(args.repeats):
        for batch, overlap, with_pdl, with_record, with_reuse in configs:
            pdl.ENABLED = with_pdl  # read at each launch: the engine built next captures with it
            runs[(batch, overlap, with_pdl, with_record, with_reuse)].append(
                engine_tbt_ms(args.model, batch, args.steps, overlap, with_record, with_reuse)
            )
    results = []
    for (batch, overlap, with_pdl, with_record, with_reuse), engines in runs.items():
        result = dict(engines[0])  # the first engine's graph and overlap counters, then the medians
        result["tbt_ms"] = statistics.median(r["tbt_ms"] for r in engines)
        result["p90_ms"] = statistics.median(r["p90_ms"] for r in engines)
        result["engines_tbt_ms"] = [round(r["tbt_ms"], 4) for r in engines]
        result["engines_host_probe_us"] = [r["host_probe_us"] for r in engines]
        result["engines_wait_ms"] = [_round(r["wait_ms"]) for r in engines]
        result["engines_graph_alone_ms"] = [_round(r["graph_alone_ms"]) for r in engines]
        result["pdl"] = with_pdl
        results.append(result)
        mode = f"overlap {'on' if overlap else 'off'}"
        mode += f" pdl {'on' if with_pdl else 'off'}" if len(pdl_modes) > 1 else ""
        mode += f" record kernel {'on' if with_record else 'off'}" if len(record_modes) > 1 else ""
        mode += f" host reuse {'on' if with_reuse else 'off'}" if len(reuse_modes) > 1 else ""
        print(
            f"engine step {args.model.name} batch {batch} {mode}: "
            f"{result['tbt_ms']:.3f} ms median of {len(engines)} engines' medians "
            f"({', '.join(f'{t:.3f}' for t in result['engines_tbt_ms'])}), p90 {result['p90_ms']:.3f} ms "
            f"over {result['steps']} steps each; host probe "
            f"{', '.join(f'{t:.2f}' for t in result['engines_host_probe_us'])} us per launch; "
            f"tokens' wait {result['engines_wait_ms']} ms, "
            f"graph alone {result['engines_graph_alone_ms']} ms; "
            f"graphs {result['graphs']}; {result['overlap_stats']}",
            flush=True,
        )
    if args.json is not None:
        record = {
            **run_header(),
            "model": args.model.name,
            "engine_step": results,
        }
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
