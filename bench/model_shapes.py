"""Model shapes the benchmarks run with random bf16 weights, and HF ``generate`` on the same shape.

``MODELS``: DeepScaleR / Qwen2.5-1.5B (``qwen1.5b``) and Llama-3.1-8B (``llama8b``) layer shapes,
and SmolLM2-135M (``smollm2``, the CPU default model's shape, as its GGUF declares it) for the
kernel micro-benchmarks.
"""

from __future__ import annotations

import time

import torch

from lil_sparse.models.config import ModelConfig, RopeScaling
from lil_sparse.models.transformer import CausalLM

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
    "smollm2": ModelConfig(
        architecture="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        rope_theta=1e5,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        attention_bias=False,
    ),
}
# The speed-T6 grid: dense and every sparse policy at two budgets (skipped where budget >= context).


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
