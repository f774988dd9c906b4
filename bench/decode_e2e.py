"""End-to-end decode: time between tokens per policy and budget, against dense, HF and the floor.

Random-weight bf16 models with real shapes (DeepScaleR/Qwen2.5-1.5B and Llama-3.1-8B) run the
engine's own decode step (:class:`ModelRunner` on the FlashInfer backend, CUDA graphs on) for a
batch of sequences whose context is already in the KV cache (prefill is skipped: TBT does not
depend on how the cache was filled; Quest/InfLLM metadata is random). One step = runner decode,
greedy argmax and the host copy of the tokens, as the engine's step does.

The floor of a step is (weight bytes + KV bytes the step attends + selection metadata bytes) /
the copy bandwidth measured in the same run. HF ``transformers`` ``generate`` (bf16, sdpa,
dynamic cache) runs the same shape. Writes docs/bench/decode_e2e.md.

    python bench/decode_e2e.py [--quick] [--models qwen1.5b,llama8b] [--profile DIR]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import time
from pathlib import Path

import torch

from bench.common import copy_bandwidth_gbs, verdict, write_markdown
from lil_sparse.attention.flashinfer_backend import FlashInferBackend
from lil_sparse.config import EngineConfig
from lil_sparse.engine.model_runner import ModelRunner
from lil_sparse.engine.page_manager import PageManager
from lil_sparse.engine.sequence import Sequence
from lil_sparse.kv import BlockTable, KVCache, PagePool
from lil_sparse.models.config import ModelConfig, RopeScaling
from lil_sparse.models.transformer import CausalLM
from lil_sparse.options import RequestOptions, SparseOptions

PAGE_SIZE = 16
MEMORY_LIMIT_BYTES = 60 * 2**30  # KV + metadata we allow next to the weights on an 80 GB card
MODELS = {
    "qwen1.5b": ModelConfig(
        architecture="qwen2",
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        head_dim=128,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        attention_bias=True,
    ),
    "llama8b": ModelConfig(
        architecture="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rope_theta=5e5,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
        attention_bias=False,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192),
    ),
}
POLICY_RUNS = [("full", 0), ("quest", 1024)] + [(p, 4096) for p in ("sink", "h2o", "quest", "infllm")]


def random_model(config: ModelConfig) -> CausalLM:
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = CausalLM(config)
    torch.set_default_dtype(torch.float32)
    return model.eval().requires_grad_(False)


def weight_bytes(model: CausalLM, batch: int) -> int:
    """Bytes a decode step reads: every weight, but only ``batch`` rows of an untied embedding."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.model.embed_tokens.weight
    if model.lm_head is not None:
        total -= embed.numel() * embed.element_size() - batch * embed.shape[1] * embed.element_size()
    return total


class DecodeBench:
    """One model, context and batch: a KV cache shared by every policy run."""

    def __init__(self, model: CausalLM, context: int, batch: int, steps: int) -> None:
        mc = model.config
        self.model, self.mc, self.context, self.batch, self.steps = model, mc, context, batch, steps
        pages_per_seq = -(-(context + steps + PAGE_SIZE) // PAGE_SIZE)
        self.num_pages = batch * mc.num_kv_heads * pages_per_seq
        self.kv = KVCache(
            mc.num_layers, self.num_pages, PAGE_SIZE, mc.head_dim, torch.bfloat16, torch.device("cuda")
        )
        self.config = EngineConfig(
            model="bench",
            device="cuda",
            backend="flashinfer",
            page_size=PAGE_SIZE,
            max_batch_size=batch,
            max_model_len=pages_per_seq * PAGE_SIZE,
            kv_cache_tokens=pages_per_seq * PAGE_SIZE * batch,
        )
        self.backend = FlashInferBackend(self.config, mc)
        self.pages_per_seq = pages_per_seq

    def run(self, policy: str, budget: int, profile_to: Path | None = None) -> dict:
        mc = self.mc
        pool = PagePool(self.num_pages)
        table = BlockTable(self.batch, mc.num_kv_heads, self.pages_per_seq, torch.device("cuda"))
        pages = PageManager(pool, table, self.kv, mc.num_kv_heads, PAGE_SIZE)
        runner = ModelRunner(self.model, self.kv, pages, self.backend, mc.num_layers, cuda_graphs=True)
        sparse = SparseOptions(policy=policy, budget_tokens=max(budget, PAGE_SIZE), sink_tokens=64)
        seqs = []
        for index in range(self.batch):
            seq = Sequence(
                request_id=str(index),
                prompt_token_ids=[1] * self.context,
                options=RequestOptions(sparse=sparse),
                budget_pages=sparse.budget_pages(PAGE_SIZE) if policy != "full" else 1 << 30,
                sink_pages=sparse.sink_pages(PAGE_SIZE),
                recent_pages=sparse.recent_pages(PAGE_SIZE) if policy != "full" else 1,
                reserved_pages=0,
            )
            pages.admit(seq)
            seq.num_cached_tokens = self.context
            seq.output_token_ids.append(1)
            seqs.append(seq)
        # Stand-in for prefill: random metadata (admission reset it), then eviction to the budget.
        self.kv.key_min.normal_().sub_(1.0)
        self.kv.key_max.normal_().add_(1.0)
        self.kv.key_sum.normal_()
        self.kv.attention_mass.uniform_()
        pages.evict_after_prefill(seqs)

        def step() -> None:
            tokens = runner.decode(seqs).argmax(dim=-1).tolist()
            for seq, token in zip(seqs, tokens, strict=True):
                seq.output_token_ids.append(token)

        for _ in range(3):  # warm-up; the first full/sink step also captures the graph
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(self.steps):
            step()
        tbt_ms = (time.perf_counter() - start) / self.steps * 1e3
        if profile_to is not None:
            profile_step(step, profile_to)
        attended = seqs[0].kv_report.attended_pages_per_step[-1] * mc.num_layers  # pages per head, all layers
        page_layer_bytes = 2 * PAGE_SIZE * mc.head_dim * 2
        kv_bytes = self.batch * mc.num_kv_heads * attended * page_layer_bytes
        held = seqs[0].held_pages
        sparse_layers = mc.num_layers - (sparse.dense_layers if policy == "quest" else 0)
        # Metadata read per held page, in its real dtype: Quest's [min | max] bounds in the cache
        # dtype (bf16), InfLLM's fp32 key sum.
        meta_per_page = {
            "quest": 2 * mc.head_dim * self.kv.key_bounds.element_size(),
            "infllm": mc.head_dim * self.kv.key_sum.element_size(),
        }.get(policy, 0)
        meta_bytes = self.batch * mc.num_kv_heads * sparse_layers * held * meta_per_page
        kv_held = pool.num_used * (self.kv.page_bytes() + 3 * mc.num_layers * mc.head_dim * 4)
        for seq in seqs:
            pages.release(seq)
        return {
            "tbt_ms": tbt_ms,
            "kv_bytes": kv_bytes,
            "meta_bytes": meta_bytes,
            "kv_held_gib": kv_held / 2**30,
        }


def profile_step(step, out: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    out.write_text(table)
    print(table[:6000], flush=True)


def hf_tbt_ms(mc: ModelConfig, context: int, batch: int, new_tokens: int = 17) -> float:
    """HF generate TBT: (time for ``new_tokens`` - time for 1) / (new_tokens - 1), prefill cancels."""
    import transformers

    config_class = transformers.Qwen2Config if mc.architecture == "qwen2" else transformers.LlamaConfig
    hf_config = config_class(
        **{k: v for k, v in mc.to_hf_dict().items() if k not in ("architectures", "model_type")}
    )
    hf_config._attn_implementation = "sdpa"
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    torch.set_default_dtype(torch.float32)
    model.eval()
    ids = torch.randint(3, 1000, (batch, context), device="cuda")
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

    def timed(n: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(2)  # warm-up
    return (timed(new_tokens) - timed(1)) / (new_tokens - 1) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="qwen1.5b,llama8b")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--profile", type=Path, default=None, help="folder for profiles of the target cases")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/decode_e2e.md"))
    parser.add_argument("--contexts", default=None, help="comma list, e.g. 4096,32768 (overrides --quick)")
    parser.add_argument("--batches", default=None, help="comma list, e.g. 1,8")
    parser.add_argument("--runs", default=None, help="policy:budget comma list, e.g. full:0,quest:4096")
    parser.add_argument("--no-hf", action="store_true", help="skip the HF generate baseline")
    args = parser.parse_args()
    contexts = [4096] if args.quick else [2048, 4096, 32768]
    batches = [1, 8] if args.quick else [1, 8, 32]
    runs = [*POLICY_RUNS[:1], ("quest", 1024)] if args.quick else POLICY_RUNS
    if args.contexts:
        contexts = [int(c) for c in args.contexts.split(",")]
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
    if args.runs:
        runs = [(p, int(b)) for p, b in (r.split(":") for r in args.runs.split(","))]
    bandwidth = copy_bandwidth_gbs()
    print(f"copy bandwidth (read + write): {bandwidth:.0f} GB/s", flush=True)
    rows: list[list] = []
    results: dict[tuple, dict] = {}
    hf: dict[tuple, float] = {}
    for name in args.models.split(","):
        mc = MODELS[name]
        model = random_model(mc)
        for context, batch in itertools.product(contexts, batches):
            kv_need = (
                batch
                * mc.num_kv_heads
                * (context // PAGE_SIZE)
                * (2 * PAGE_SIZE * mc.head_dim * 2 + 3 * mc.head_dim * 4)
                * mc.num_layers
            )
            if kv_need > MEMORY_LIMIT_BYTES:
                rows.append([name, context, batch, "all", "does not fit", "", "", "", "", ""])
                continue
            bench = DecodeBench(model, context, batch, args.steps)
            for policy, budget in runs:
                if policy != "full" and budget >= context:
                    continue
                target_case = (name, context, batch, policy, budget) in (
                    ("qwen1.5b", 4096, 1, "full", 0),
                    ("llama8b", 32768, 8, "quest", 4096),
                    ("llama8b", 32768, 8, "full", 0),
                )
                profile_to = None
                if args.profile is not None and target_case:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    profile_to = args.profile / f"profile_{name}_{context}_{batch}_{policy}{budget}.txt"
                result = bench.run(policy, budget, profile_to)
                floor_ms = (
                    (weight_bytes(model, batch) + result["kv_bytes"] + result["meta_bytes"])
                    / (bandwidth * 1e9)
                    * 1e3
                )
                result["floor_ms"] = floor_ms
                results[name, context, batch, policy, budget] = result
                dense = results.get((name, context, batch, "full", 0), result)
                rows.append(
                    [
                        name,
                        context,
                        batch,
                        policy,
                        budget or "-",
                        f"{result['tbt_ms']:.2f}",
                        f"{floor_ms:.2f}",
                        f"{result['tbt_ms'] / floor_ms:.2f}",
                        f"{dense['tbt_ms'] / result['tbt_ms']:.2f}",
                        f"{result['kv_held_gib']:.2f}",
                    ]
                )
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
            del bench
            gc.collect()
            torch.cuda.empty_cache()
        del model
        gc.collect()
        torch.cuda.empty_cache()
        hf_cases = [(2048, 1), (2048, 8)] if args.quick else [(2048, 1), (2048, 8), (2048, 32)]
        if args.no_hf:
            hf_cases = []
        for context, batch in hf_cases:
            if name == "llama8b" and batch == 32:
                continue
            hf[name, context, batch] = hf_tbt_ms(mc, context, batch)
            gc.collect()
            torch.cuda.empty_cache()
            ours = results.get((name, context, batch, "full", 0))
            line = f"HF generate {name} ctx {context} batch {batch}: {hf[name, context, batch]:.2f} ms"
            if ours:
                line += f"; ours {ours['tbt_ms']:.2f} ms ({hf[name, context, batch] / ours['tbt_ms']:.1f}x)"
            print(line, flush=True)
    notes = [
        f"copy bandwidth measured in this run: {bandwidth:.0f} GB/s (bytes read + written)",
        "TBT: wall time per engine decode step (runner decode + argmax + host copy) after 3 warm-up steps",
        "floor: (weights + attended KV + selection metadata bytes) / copy bandwidth",
        "KV held: pages in use at the end x (K + V + fp32 metadata) bytes; the pool is preallocated",
    ]
    notes += [
        f"HF generate (bf16, sdpa, dynamic cache) {n} ctx {c} batch {b}: {t:.2f} ms per token"
        for (n, c, b), t in hf.items()
    ]
    notes += check_targets(results, hf)
    header = [
        "model",
        "context",
        "batch",
        "policy",
        "budget",
        "TBT ms",
        "floor ms",
        "TBT / floor",
        "speed-up vs dense",
        "KV held GiB",
    ]
    write_markdown(args.out, "End-to-end decode", notes, header, rows)
    print(f"wrote {args.out}")


def check_targets(results: dict, hf: dict) -> list[str]:
    lines = []
    dense = results.get(("qwen1.5b", 4096, 1, "full", 0))
    if dense:
        ratio = dense["tbt_ms"] / dense["floor_ms"]
        lines.append(verdict("dense 1.5B batch 1 4k within 1.3x floor", ratio <= 1.3, f"{ratio:.2f}x"))
    quest = results.get(("llama8b", 32768, 8, "quest", 4096))
    full8 = results.get(("llama8b", 32768, 8, "full", 0))
    if quest and full8:
        speedup = full8["tbt_ms"] / quest["tbt_ms"]
        lines.append(verdict("8B batch 8 32k quest-4096 >= 1.8x dense", speedup >= 1.8, f"{speedup:.2f}x"))
        ratio = quest["tbt_ms"] / quest["floor_ms"]
        lines.append(
            verdict("8B batch 8 32k quest-4096 within 1.3x own floor", ratio <= 1.3, f"{ratio:.2f}x")
        )
    for (name, context, batch), hf_ms in hf.items():
        ours = results.get((name, context, batch, "full", 0))
        if ours and batch in (1, 32):
            need = 10 if batch == 1 else 5
            speedup = hf_ms / ours["tbt_ms"]
            lines.append(
                verdict(f">= {need}x HF generate, {name} batch {batch}", speedup >= need, f"{speedup:.1f}x")
            )
    return lines


if __name__ == "__main__":
    main()
