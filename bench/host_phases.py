"""Where a decode step's host time goes on the GPU machine: native wall time per phase.

Wraps the step's phases (scheduler, overlap take and launch, the sampler's start and wait, token
handling; inside the runner's decode: the page manager, the step inputs, the layouts, the policy
groups, the backend's plan check, the CUDA-graph run with the base pages' pack and the graph
key) with ``time.perf_counter`` and prints each phase's median and mean per call, in us:

- ``MODEL`` given: SmolLM2's ``LLMEngine.step()`` (CUDA graphs, greedy, overlap on) at batch 1,
  8 and 1 again, 200 timed steps after 40, on the engine's real path;
- always: the runner's decode (``bench/decode_e2e.py``'s pipelined loop) at the 1.5B shape,
  4k tokens, batch 1, dense and h2o@1024, 100 steps (the medians skip its warm-up calls'
  captures; the means do not).

A wrapper adds well under a microsecond per call; nested phases are included in their parent's
time. The host probe (one-element kernel launch, ``bench.common.host_launch_us``) says how fast
this process's host is: the day's probes ranged from about 7 to 16 us.

    python bench/host_phases.py [MODEL.gguf]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

import lil_sparse.engine.model_runner as model_runner
from bench.common import host_launch_us, settle_cuda_graphs
from lil_sparse.attention.flashinfer_backend import FlashInferBackend
from lil_sparse.engine import llm_engine
from lil_sparse.engine.cuda_graphs import DecodeGraphs, DecodeStep
from lil_sparse.engine.overlap import Overlap
from lil_sparse.engine.page_manager import PageManager
from lil_sparse.engine.scheduler import Scheduler
from lil_sparse.engine.step_sampler import StepSampler
from lil_sparse.engine.step_tokens import StepTokens
from lil_sparse.sampling.sampler import Sampler

TIMES: defaultdict[str, list[float]] = defaultdict(list)
RECORDING = [False]


def wrap(owner: object, name: str, label: str) -> None:
    """Replace ``owner.name`` by a timed call recorded under ``label`` while RECORDING."""
    inner: Callable = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            if RECORDING[0]:
                TIMES[label].append(time.perf_counter() - start)

    setattr(owner, name, timed)


PHASES = [
    (llm_engine.LLMEngine, "step", "engine.step"),
    (Scheduler, "schedule", "schedule"),
    (Overlap, "take", "overlap.take"),
    (Overlap, "launch", "overlap.launch"),
    (StepSampler, "start", "sampler.start"),
    (Sampler, "sample", "  sampler.sample"),
    (Sampler, "sample_record", "  sampler.sample_record"),
    (StepSampler, "wait", "sampler.wait"),
    (StepTokens, "_handle_tokens", "handle_tokens"),
    (model_runner.ModelRunner, "decode", "runner.decode"),
    (PageManager, "prepare_decode", "  prepare_decode"),
    (model_runner, "build_decode_inputs", "  build_decode_inputs"),
    (model_runner.DecodeLayouts, "layer_layouts", "  layer_layouts"),
    (model_runner.DecodeLayouts, "page_counts", "  page_counts"),
    (model_runner.ModelRunner, "_policy_groups", "  policy_groups"),
    (FlashInferBackend, "begin_decode_step", "  begin_decode_step"),
    (DecodeGraphs, "run", "  graphs.run"),
    (DecodeGraphs, "_pack_base", "    pack_base"),
    (DecodeStep, "key", "    step.key"),
    (FlashInferBackend, "step_key", "    backend.step_key"),
    (model_runner, "decode_kv_records", "  kv_records"),
]


def report(title: str) -> None:
    print(f"== {title}")
    for label, times in TIMES.items():
        if times:
            median, mean = statistics.median(times) * 1e6, statistics.mean(times) * 1e6
            print(f"{label:28s} n={len(times):4d} median {median:8.1f} us  mean {mean:8.1f} us")
    TIMES.clear()


def engine_phases(model_path: str) -> None:
    from lil_sparse.config import EngineConfig
    from lil_sparse.loading import load_model
    from lil_sparse.options import RequestOptions, StoppingOptions

    loaded = load_model(Path(model_path), torch.bfloat16, "cuda")
    for batch in (1, 8, 1):
        config = EngineConfig(
            model=model_path, device="cuda", dtype="bfloat16", backend="flashinfer", kv_cache_tokens=8192,
            max_batch_size=batch, guardian_workers=0, cuda_graphs=True, warm_up=False,
        )  # fmt: skip
        engine = llm_engine.LLMEngine(loaded, config)
        prompt = loaded.tokenizer.encode("Please reason step by step: what is 17 times 23?")
        options = RequestOptions(stopping=StoppingOptions(max_new_tokens=400, ignore_eos=True))
        for _ in range(batch):
            engine.add_request(prompt, options)
        for _ in range(40):
            engine.step()
        RECORDING[0] = True
        for _ in range(200):
            engine.step()
        RECORDING[0] = False
        report(f"SmolLM2 engine batch {batch} (probe {host_launch_us(torch.device('cuda')):.2f} us)")
        engine.close()


def runner_phases() -> None:
    from bench.decode_e2e import PAGE_SIZE, DecodeBench, kv_pages_needed
    from bench.model_shapes import MODELS, random_model

    DecodeBench.selection = "when_faster"
    config = MODELS["qwen1.5b"]
    model = random_model(config)
    for spec in [("full", 0), ("h2o", 1024)]:
        need = kv_pages_needed(config, [spec], 4096, 100)
        bench = DecodeBench(model, need, 1, -(-(4096 + 100 + 4 + PAGE_SIZE) // PAGE_SIZE), True)
        RECORDING[0] = True
        result = bench.run([spec], 4096, 100)
        RECORDING[0] = False
        report(f"1.5B runner {spec}: tbt {result['tbt_ms']:.4f} ms, host {result['host_ms']:.4f} ms")
        del bench


def main() -> None:
    for owner, name, label in PHASES:
        wrap(owner, name, label)
    settle_cuda_graphs()
    print(f"host probe {host_launch_us(torch.device('cuda')):.2f} us per launch", flush=True)
    if len(sys.argv) > 1:
        engine_phases(sys.argv[1])
    runner_phases()


if __name__ == "__main__":
    main()
