"""End-to-end decode: time between tokens per policy and budget, against dense, HF and the floor.

Random-weight bf16 models with real shapes (DeepScaleR/Qwen2.5-1.5B and Llama-3.1-8B) run the
engine's own decode step (:class:`ModelRunner` on the FlashInfer backend, CUDA graphs on) for a
batch of sequences whose context is already in the KV cache (prefill is skipped: TBT does not
depend on how the cache was filled; Quest/InfLLM metadata is random). One step = runner decode,
the sampler's greedy pick (argmax and its log-probability, ``Sampler.greedy``; a bare ``argmax``
before commit 6c7cfc8, whose first report run is that of 2026-12-01 03:10-03:12 UTC) and the host
copy of the tokens, as the engine's step does. With ``--overlap`` (the default, as the engine
runs on CUDA) the timed loop pipelines like the engine's overlap scheduling: step n+1 is launched
on step n's argmax still on the device, before the host waits for step n's token copy (a CUDA
event); ``--no-overlap`` times the serial loop. Since 2026-12-01 21:00 UTC the pipelined loop
picks and copies as the engine's all-greedy step does (:func:`~lil_sparse.kernels.row_argmax.
greedy_record`, its kernel writing the record into a reused pinned buffer, with a reused event,
:class:`~lil_sparse.engine.step_sampler.HostRecords`); before, ``Sampler.greedy`` (the same
argmax plus a few PyTorch ops for the log-probability) and a fresh pinned buffer and event. The
JSON records which ran (``overlap``, per run and for the file).

The floor of a step is (weight bytes + KV bytes the step attends + selection metadata bytes) /
the copy bandwidth measured in the same run. TBT is the median of ``--steps`` (>= 20)
timed steps after ``WARMUP_STEPS``. HF ``transformers`` ``generate`` (bf16, sdpa, dynamic
cache) runs the 1.5B shape for comparison. Results go to a JSON file that ``bench/targets.py``
turns into the report and the speed-T lines.

    python bench/decode_e2e.py --json OUT.json [--models qwen1.5b,llama8b] [--contexts 4096,32768]
        [--batches 1,8,32] [--runs full:0,quest:4096] [--mixed 8] [--throughput 64,128] [--hf 1,32]
        [--selection exact|when_faster]

The process first captures and drops a few trivial CUDA graphs
(:func:`bench.common.settle_cuda_graphs`): a process's first three graphs replay faster than
later ones, and a server runs in the slower mode.

``--selection`` is the runner's ``EngineConfig.selection`` (default exact). The selection gate's
constants come from an exact run: ``python bench/gate_constants.py OUT.json``.
``--no-overlap`` times the serial loop instead of the pipelined one. ``--graph-alone`` also times
each run's CUDA graph replayed alone (:func:`graph_alone_ms`): the step less that is the work
outside the graph.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch

from bench.common import copy_bandwidth_gbs, host_launch_us, run_header, settle_cuda_graphs
from bench.kernel_timeline import format_timeline, kernel_spans, summarize
from bench.model_shapes import MODELS, hf_tbt_ms, random_model, weight_bytes
from lil_sparse.attention.flashinfer_backend import FlashInferBackend
from lil_sparse.config import SELECTION_MODES, SWITCH, EngineConfig
from lil_sparse.engine.decode_layouts import dense_until
from lil_sparse.engine.model_runner import ModelRunner
from lil_sparse.engine.page_manager import PageManager
from lil_sparse.engine.sequence import Sequence
from lil_sparse.engine.step_sampler import HostLanding, HostRecords
from lil_sparse.kernels import pdl
from lil_sparse.kernels.row_argmax import greedy_record, kernel_writes_pinned
from lil_sparse.kv import BlockTable, KVCache, PagePool
from lil_sparse.models.config import ModelConfig
from lil_sparse.models.transformer import CausalLM
from lil_sparse.options import POLICY_FIELDS, POLICY_NAMES, RequestOptions, SparseOptions
from lil_sparse.policies import get_policy
from lil_sparse.sampling import Sampler

PAGE_SIZE = 16
GRID_RUNS = [("full", 0)] + [(p, b) for b in (1024, 4096) for p in ("sink", "h2o", "quest", "infllm")]
WARMUP_STEPS = 4  # decode steps before timing: the second sight of a step shape captures its graph
HEADROOM_BYTES = 4 * 2**30  # left free next to the KV cache: activations, graphs, workspaces


def randomize_metadata(kv: KVCache) -> None:
    """Stand-in for prefill: random key bounds, key sums and means, and attention mass on every page."""
    kv.key_min.normal_().sub_(1.0)
    kv.key_max.normal_().add_(1.0)
    kv.key_sum.normal_()
    kv.key_mean.copy_(kv.key_sum * (1.0 / kv.page_size))
    kv.attention_mass.uniform_()


class DecodeBench:
    """One model, a KV cache of ``num_pages`` one-head pages, and decode runs over it.

    A run admits its sequences with ``context`` tokens already cached (prefill is skipped: TBT
    does not depend on how the cache was filled), evicts the eviction policies' sequences to
    their budget right after admission (so a mixed batch never holds every full context at once)
    and times ``steps`` runner decode steps after ``WARMUP_STEPS``.
    """

    selection = "exact"  # the runners' EngineConfig.selection (--selection)
    tensor_cores: bool | None = None  # FlashInferBackend(use_tensor_cores=...) (--tensor-cores)
    split_calls = True  # FlashInferBackend(split_calls=...) (--split-calls)
    concurrent_split = True  # FlashInferBackend(concurrent_split=...) (--concurrent-split)
    fast_decode = True  # FlashInferBackend(fast_decode=...) (--fast-decode)
    side_streams = True  # ModelRunner(side_streams=...) (--side-streams)
    graph_alone = False  # also time the step's CUDA graph replayed alone (--graph-alone)

    def __init__(
        self, model: CausalLM, num_pages: int, max_seqs: int, max_pages_per_seq: int, overlap: bool = True
    ) -> None:
        mc = model.config
        self.overlap = overlap
        self.model, self.mc = model, mc
        self.num_pages, self.max_seqs, self.max_pages_per_seq = num_pages, max_seqs, max_pages_per_seq
        self.kv = KVCache(
            mc.num_layers, num_pages, PAGE_SIZE, mc.head_dim, torch.bfloat16, torch.device("cuda")
        )
        config = EngineConfig(
            model="bench",
            device="cuda",
            backend="flashinfer",
            page_size=PAGE_SIZE,
            max_batch_size=max_seqs,
            max_model_len=max_pages_per_seq * PAGE_SIZE,
            kv_cache_tokens=max_pages_per_seq * PAGE_SIZE,
        )
        self.backend = FlashInferBackend(
            config,
            mc,
            use_tensor_cores=self.tensor_cores,
            split_calls=self.split_calls,
            concurrent_split=self.concurrent_split,
            fast_decode=self.fast_decode,
        )

    def run(
        self, specs: list[tuple[str, int]], context: int, steps: int, profile_to: Path | None = None
    ) -> dict:
        """``specs``: ``(policy, budget_tokens)`` per sequence. Returns timings, bytes, graph counters."""
        mc = self.mc
        pool = PagePool(self.num_pages)
        table = BlockTable(self.max_seqs, mc.num_kv_heads, self.max_pages_per_seq, torch.device("cuda"))
        pages = PageManager(pool, table, self.kv, mc.num_kv_heads, PAGE_SIZE)
        runner = ModelRunner(
            self.model,
            self.kv,
            pages,
            self.backend,
            mc.num_layers,
            cuda_graphs=True,
            selection=self.selection,
            side_streams=self.side_streams,
        )
        order = sorted(range(len(specs)), key=lambda i: not get_policy(specs[i][0]).evicts)
        seqs: list[Sequence] = [None] * len(specs)  # type: ignore[list-item]
        for index in order:
            policy, budget = specs[index]
            sparse = SparseOptions(policy=policy, budget_tokens=max(budget, PAGE_SIZE), sink_tokens=64)
            seq = Sequence(
                request_id=str(index),
                prompt_token_ids=[1] * context,
                options=RequestOptions(sparse=sparse),
                budget_pages=sparse.budget_pages(PAGE_SIZE) if get_policy(policy).uses_budget else 1 << 30,
                sink_pages=sparse.sink_pages(PAGE_SIZE),
                recent_pages=sparse.recent_pages(PAGE_SIZE) if get_policy(policy).uses_budget else 1,
                reserved_pages=0,
            )
            pages.admit(seq)
            seq.num_cached_tokens = context
            seq.output_token_ids.append(1)
            randomize_metadata(self.kv)
            pages.evict_after_prefill([seq])
            seqs[index] = seq

        host_times: list[float] = []

        def step() -> None:
            start = time.perf_counter()
            logits = runner.decode(seqs)  # returns once the step's work is queued
            host_times.append(time.perf_counter() - start)
            tokens = Sampler.greedy(logits)[0].tolist()
            for seq, token in zip(seqs, tokens, strict=True):
                seq.output_token_ids.append(token)

        # The pipelined step's previous step: (argmax [B] int64 on the device, the landing place
        # of its host record); its tokens are appended one step late.
        in_flight: list[tuple[torch.Tensor, HostLanding]] = []
        landings = HostRecords()
        zero_copy = kernel_writes_pinned(torch.device("cuda"))  # as the engine's sampler checks

        def pipelined_step() -> None:
            start = time.perf_counter()
            previous = in_flight.pop() if in_flight else None
            logits = runner.decode(seqs, input_ids=None if previous is None else previous[0])
            host_times.append(time.perf_counter() - start)
            place = landings.take(logits.shape[0])
            # The engine's all-greedy pick: the argmax writes the record into pinned memory.
            tokens, record = greedy_record(logits.float(), out=place.host if zero_copy else None)
            if record is not place.host:
                place.host.copy_(record, non_blocking=True)
            place.ready.record()
            in_flight.append((tokens, place))
            if previous is not None:  # step n's tokens, while step n+1 runs
                append_tokens(previous[1])

        def append_tokens(place: HostLanding) -> None:
            place.ready.synchronize()
            for seq, token in zip(seqs, place.host[0].tolist(), strict=True):
                seq.output_token_ids.append(int(token))

        def drain() -> None:
            if in_flight:
                append_tokens(in_flight.pop()[1])

        timed_step = pipelined_step if self.overlap else step
        for _ in range(WARMUP_STEPS):  # the second sight of a shape captures its graph
            step()
        torch.cuda.synchronize()
        if self.overlap:  # fill the pipeline: a timed step then ends one step in flight
            for _ in range(2):
                pipelined_step()
        before = runner.graph_stats()  # after the fill: the counters cover the timed steps only
        host_times.clear()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            timed_step()  # ends with a step's tokens on the host (serial: this step's)
            times.append(time.perf_counter() - start)
        drain()
        after = runner.graph_stats()
        if profile_to is not None:
            profile_step(timed_step, profile_to)
            drain()
        graph_ms = graph_alone_ms(runner) if self.graph_alone else None
        kv_bytes = meta_bytes = 0
        page_layer_bytes = 2 * PAGE_SIZE * mc.head_dim * self.kv.k.element_size()
        for seq, (policy, _) in zip(seqs, specs, strict=True):
            attended = seq.kv_report.attended_pages_per_step[-1] * mc.num_layers  # per head, all layers
            kv_bytes += mc.num_kv_heads * attended * page_layer_bytes
            selecting = get_policy(policy).selects_per_layer and seq.held_pages > seq.budget_pages
            selecting = selecting and not seq.kv_report.selection_skipped_steps  # the gate's dense rows
            if selecting:  # metadata of every held page, in its real dtype, in each selecting layer
                layers = mc.num_layers - dense_until(seq)
                per_page = get_policy(policy).metadata_bytes_per_page(mc.head_dim, self.kv.k.dtype)
                meta_bytes += mc.num_kv_heads * layers * seq.held_pages * per_page
        kv_held = pool.num_used * self.kv.page_bytes()
        for seq in seqs:
            pages.release(seq)
        return {
            "overlap": self.overlap,
            "tbt_ms": statistics.median(times) * 1e3,
            "host_ms": statistics.median(host_times[:steps]) * 1e3,  # runner.decode until queued
            "steps": steps,
            "kv_bytes": kv_bytes,
            "meta_bytes": meta_bytes,
            "kv_held_gib": kv_held / 2**30,
            "graph_replays": after["replays"] - before["replays"],
            "eager_steps": after["eager_steps"] - before["eager_steps"],
            **({} if graph_ms is None else {"graph_alone_ms": graph_ms}),
        }


GRAPH_REPLAYS = 100


def graph_alone_ms(runner: ModelRunner) -> float | None:
    """The step's CUDA graph alone: ``GRAPH_REPLAYS`` back-to-back replays of the graph the timed
    steps replayed last, between two CUDA events, per replay in ms (None when no graph was
    captured). The step time less this is what the step runs outside its graph: its inputs, the
    page lists' pack, the greedy pick and the tokens' copy. The replays repeat the last step's
    work on its own inputs (the same K/V slot written again), after the timed steps."""
    graphs = runner.graphs
    if graphs is None or not graphs.captured:
        return None
    graph = next(reversed(graphs.captured.values())).graph  # the most recently replayed
    torch.cuda.synchronize()
    graph.replay()  # one untimed replay
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(GRAPH_REPLAYS):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / GRAPH_REPLAYS


def profile_step(step, out: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table[:6000], flush=True)
    timeline = format_timeline(summarize(kernel_spans(prof.events())), steps=3)
    out.with_name(out.stem + "_timeline.txt").write_text(timeline)
    print(timeline[:3000], flush=True)


def kv_pages_needed(mc: ModelConfig, specs: list[tuple[str, int]], context: int, steps: int) -> int:
    """One-head pages a run holds at its peak: kept pages of every sequence plus, while an
    eviction policy's sequence is admitted, its whole context once."""
    full_pages = -(-(context + steps + WARMUP_STEPS + PAGE_SIZE) // PAGE_SIZE)
    kept = 0
    for policy, budget in specs:
        evicts = get_policy(policy).evicts
        kept += min(full_pages, budget // PAGE_SIZE + 1) if evicts else full_pages
    extra = full_pages if any(get_policy(p).evicts for p, _ in specs) else 0
    return (kept + extra) * mc.num_kv_heads


def page_bytes_with_metadata(mc: ModelConfig) -> int:
    """K + V + bf16 bounds + fp32 key sum + bf16 key mean of one one-head page, all layers."""
    return mc.num_layers * (2 * PAGE_SIZE * mc.head_dim * 2 + 2 * mc.head_dim * 2 + mc.head_dim * (4 + 2))


def run_cell(
    model, name, context, batch, runs, steps, bandwidth, results, profile_dir=None, overlap=True
) -> None:
    """Every run of one (model, context, batch) cell on one KV cache; results keyed by run."""
    mc = model.config
    need = max(kv_pages_needed(mc, [spec] * batch, context, steps) for spec in runs)
    free = torch.cuda.mem_get_info()[0] - HEADROOM_BYTES
    if need * page_bytes_with_metadata(mc) > free:
        results[f"{name}|{context}|{batch}|fit"] = {"fits": False}
        print(f"{name} {context} batch {batch}: does not fit ({need} pages)", flush=True)
        return
    pages_per_seq = -(-(context + steps + WARMUP_STEPS + PAGE_SIZE) // PAGE_SIZE)
    bench = DecodeBench(model, need, batch, pages_per_seq, overlap)
    # Dense runs first and again last, and the baseline is the mean of the two: a run's position
    # in its process once moved it by up to 8% (the first three CUDA graphs of a process replay
    # faster, bench.common.settle_cuda_graphs, which main() now calls first); the two brackets
    # show what is left of such drift.
    bracketed = runs + [(p, b) for p, b in runs if not POLICY_FIELDS[p].uses_budget][:1]
    for index, (policy, budget) in enumerate(bracketed):
        if POLICY_FIELDS[policy].uses_budget and budget >= context:
            continue
        closing = index == len(runs)  # the second dense run of the cell
        profile_to = None
        if profile_dir is not None:
            profile_to = profile_dir / f"profile_{name}_{context}_{batch}_{policy}{budget}.txt"
        result = bench.run([(policy, budget)] * batch, context, steps, None if closing else profile_to)
        result["floor_ms"] = floor_ms(weight_bytes(model, batch), result, bandwidth)
        key = run_key(name, context, batch, policy, budget)
        if closing:
            first = results[key]
            result = dict(
                first,
                tbt_ms=(first["tbt_ms"] + result["tbt_ms"]) / 2,
                tbt_ms_first=first["tbt_ms"],
                tbt_ms_last=result["tbt_ms"],
            )
        results[key] = result
        dense = results.get(run_key(name, context, batch, "full", 0), result)
        print(
            f"{name} | {context} | {batch} | {policy}{' (mean of first and last)' if closing else ''} | "
            f"{budget or '-'} | {result['tbt_ms']:.2f} ms | "
            f"floor {result['floor_ms']:.2f} | x{result['tbt_ms'] / result['floor_ms']:.2f} | "
            f"vs dense {dense['tbt_ms'] / result['tbt_ms']:.2f} | replays {result['graph_replays']}/{steps}"
            + (f" | graph alone {result['graph_alone_ms']:.3f} ms" if "graph_alone_ms" in result else ""),
            flush=True,
        )
    del bench
    gc.collect()
    torch.cuda.empty_cache()


SINGLE_POLICY_ROWS = 8
"""The batch of the single-policy steps speed-T7 compares the mixed batch with."""


def run_mixed(
    model, name, context, per_policy, steps, bandwidth, results, overlap=True, profile_dir=None
) -> None:
    """speed-T7: ``per_policy`` requests of each policy (budget 4096 for the sparse ones), and the
    step's fixed cost (weights, no context to speak of: full at 256 tokens) at the mixed batch's
    size and at 8 rows, the single-policy steps' size: the two differ where the linear layers run
    other kernels at the two sizes (the skinny GEMM at 2-16 rows and cuBLAS above until
    2026-12-01 02:54 UTC; the skinny GEMM at both since)."""
    mc = model.config
    budgets = {p: 4096 if POLICY_FIELDS[p].uses_budget else 0 for p in POLICY_NAMES}
    specs = [(p, budgets[p]) for p in POLICY_NAMES for _ in range(per_policy)]
    need = kv_pages_needed(mc, specs, context, steps)
    free = torch.cuda.mem_get_info()[0] - HEADROOM_BYTES
    key = f"mixed|{name}|{context}|{per_policy}"
    if need * page_bytes_with_metadata(mc) > free:
        results[key] = {"fits": False, "need_gib": need * page_bytes_with_metadata(mc) / 2**30}
        print(f"mixed {name} {context} {per_policy} each: does not fit", flush=True)
        return
    for rows in (len(specs), SINGLE_POLICY_ROWS):
        base_specs = [("full", 0)] * rows
        base_bench = DecodeBench(model, kv_pages_needed(mc, base_specs, 256, steps), rows, 64, overlap)
        base = base_bench.run(base_specs, 256, steps)
        base["floor_ms"] = floor_ms(weight_bytes(model, rows), base, bandwidth)
        results[f"mixed-base|{name}|256|{rows}"] = base
        del base_bench
        gc.collect()
        torch.cuda.empty_cache()
    pages_per_seq = -(-(context + steps + WARMUP_STEPS + PAGE_SIZE) // PAGE_SIZE)
    bench = DecodeBench(model, need, len(specs), pages_per_seq, overlap)
    profile_to = (
        None if profile_dir is None else profile_dir / f"profile_mixed_{name}_{context}_{per_policy}.txt"
    )
    result = bench.run(specs, context, steps, profile_to)
    result["floor_ms"] = floor_ms(weight_bytes(model, len(specs)), result, bandwidth)
    results[key] = result
    print(
        f"mixed {name} {context} {per_policy} each: {result['tbt_ms']:.2f} ms, "
        f"replays {result['graph_replays']}/{steps}, eager {result['eager_steps']}",
        flush=True,
    )
    del bench
    gc.collect()
    torch.cuda.empty_cache()


def floor_ms(weights: int, result: dict, bandwidth_gbs: float) -> float:
    return (weights + result["kv_bytes"] + result["meta_bytes"]) / (bandwidth_gbs * 1e9) * 1e3


def run_key(name: str, context: int, batch: int, policy: str, budget: int) -> str:
    return f"{name}|{context}|{batch}|{policy}|{budget}"


def write_results(
    path: Path,
    bandwidth: float,
    results: dict,
    hf: dict,
    overlap: bool = True,
    host_probe: float | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        **run_header(),
        "bandwidth_gbs": bandwidth,
        **({} if host_probe is None else {"host_probe_us": round(host_probe, 3)}),
        "selection": DecodeBench.selection,
        "overlap": overlap,
        "pdl": pdl.ENABLED,
        "runs": results,
        "hf_ms": hf,
    }
    path.write_text(json.dumps(record, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="qwen1.5b,llama8b")
    parser.add_argument("--contexts", default="4096,32768")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--runs", default=None, help="policy:budget comma list (default: the T6 grid)")
    parser.add_argument("--steps", type=int, default=24, help="timed steps per run (median), >= 20")
    parser.add_argument(
        "--throughput", default="", help="extra full-policy batches at 2048 tokens, e.g. 64,128"
    )
    parser.add_argument("--mixed", type=int, default=0, help="speed-T7: requests per policy at 8B / 32k")
    parser.add_argument("--hf", default="", help="HF generate batches at 2048 tokens on qwen1.5b, e.g. 1,32")
    parser.add_argument("--profile", type=Path, default=None, help="folder for profiles of every run")
    parser.add_argument(
        "--overlap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pipeline the timed loop as the engine's overlap scheduling does (default on)",
    )
    parser.add_argument("--json", type=Path, required=True, help="results file (read by bench/targets.py)")
    parser.add_argument(
        "--selection", choices=SELECTION_MODES, default="exact", help="EngineConfig.selection (default exact)"
    )
    parser.add_argument(
        "--tensor-cores",
        choices=tuple(SWITCH),
        default="auto",
        help="FlashInfer decode kernel: tensor-core (prefill) or CUDA-core (auto: the backend's choice)",
    )
    parser.add_argument(
        "--split-calls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run a step of very unequal rows as two FlashInfer calls (default on, as the engine)",
    )
    parser.add_argument(
        "--concurrent-split",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run a split step's two FlashInfer calls at once, on two streams (default on, as the engine)",
    )
    parser.add_argument(
        "--fast-decode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the Triton decode for steps of few, short rows (default on, as the engine)",
    )
    parser.add_argument(
        "--pdl",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="launch the Triton kernels with programmatic dependent launch (default on, as the engine)",
    )
    parser.add_argument(
        "--side-streams",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="policy groups' selection and H2O's mass on streams of their own (default on, as the engine)",
    )
    parser.add_argument(
        "--graph-alone",
        action="store_true",
        help="also time each run's CUDA graph replayed alone (graph_alone_ms in the JSON)",
    )
    args = parser.parse_args()
    DecodeBench.graph_alone = args.graph_alone
    DecodeBench.split_calls = args.split_calls
    DecodeBench.concurrent_split = args.concurrent_split
    DecodeBench.fast_decode = args.fast_decode
    DecodeBench.side_streams = args.side_streams
    pdl.ENABLED = args.pdl
    DecodeBench.selection = args.selection
    DecodeBench.tensor_cores = SWITCH[args.tensor_cores]
    runs = GRID_RUNS
    if args.runs:
        runs = [(p, int(b)) for p, b in (r.split(":") for r in args.runs.split(","))]
    settle_cuda_graphs()  # every timed graph replays as in a long-running process
    bandwidth = copy_bandwidth_gbs()
    print(f"copy bandwidth (read + write): {bandwidth:.0f} GB/s", flush=True)
    host_probe = host_launch_us(torch.device("cuda"))
    print(f"host probe: {host_probe:.2f} us per one-element kernel launch", flush=True)
    results: dict[str, dict] = {}
    hf: dict[str, float] = {}
    for name in [m for m in args.models.split(",") if m]:
        model = random_model(MODELS[name])
        for context in (int(c) for c in args.contexts.split(",") if c):
            for batch in (int(b) for b in args.batches.split(",") if b):
                run_cell(
                    model,
                    name,
                    context,
                    batch,
                    runs,
                    args.steps,
                    bandwidth,
                    results,
                    args.profile,
                    args.overlap,
                )
                write_results(
                    args.json, bandwidth, results, hf, args.overlap, host_probe
                )  # partial results survive
        for batch in (int(b) for b in args.throughput.split(",") if b):
            run_cell(
                model, name, 2048, batch, [("full", 0)], args.steps, bandwidth, results, None, args.overlap
            )
        if args.mixed and name == "llama8b":
            # The 8 per policy may not fit next to the 8B weights with every page's
            # metadata: then the largest count that fits, down to 2, and the report says so.
            for per_policy in range(args.mixed, 1, -2):
                run_mixed(
                    model, name, 32768, per_policy, args.steps, bandwidth, results, args.overlap, args.profile
                )
                if results[f"mixed|{name}|32768|{per_policy}"].get("tbt_ms"):
                    break
        del model
        gc.collect()
        torch.cuda.empty_cache()
    for batch in (int(b) for b in args.hf.split(",") if b):
        hf[f"qwen1.5b|2048|{batch}"] = hf_tbt_ms(MODELS["qwen1.5b"], 2048, batch)
        print(f"HF generate qwen1.5b 2048 batch {batch}: {hf[f'qwen1.5b|2048|{batch}']:.2f} ms", flush=True)
        gc.collect()
        torch.cuda.empty_cache()
    write_results(args.json, bandwidth, results, hf, args.overlap, host_probe)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
