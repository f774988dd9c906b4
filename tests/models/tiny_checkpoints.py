"""Tiny random-weight checkpoints for the model/loader tests: HF folders built with transformers'
own classes, GGUF files written from them the way llama.cpp's converter does, and a minimal
KV-caching attention so decoding can run incrementally."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from lil_sparse.models.dense_attention import causal_attention

VOCAB_SIZE = 384  # the tiny tokenizer's vocabulary (lil_sparse.testing.tiny_model)


def build_hf_checkpoint(
    outdir: Path,
    tokenizer_dir: Path,
    architecture: str = "llama",
    tie_word_embeddings: bool = False,
    rope_scaling: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[Path, Any]:
    """Save a 2-layer, hidden-64, 4-head / 2-KV-head model with ``save_pretrained`` and return
    ``(folder, transformers_model)``; the tokenizer files are copied from ``tokenizer_dir``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        bos_token_id=0,
        eos_token_id=2,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model: Any
    if architecture == "llama":
        rope = {"rope_type": "default", "rope_theta": 10000.0}
        if rope_scaling is not None:
            rope = {"rope_theta": 500000.0, **rope_scaling}
        model = LlamaForCausalLM(LlamaConfig(rope_parameters=rope, **common))
    else:
        model = Qwen2ForCausalLM(
            Qwen2Config(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **common)
        )
    with torch.no_grad():
        # The default init (std 0.02) gives near-uniform logits; larger weights make them distinct,
        # and Qwen2's biases start at zero, so give them values to be checked too.
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.5)
            elif "norm" in name:
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0.0, 0.15)
    model.eval()
    model.save_pretrained(outdir, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, outdir / name)
    return outdir, model


def _llama_cpp_permute(weights: np.ndarray, num_heads: int) -> np.ndarray:
    # Verbatim from llama.cpp's convert_hf_to_gguf.py LlamaModel.permute.
    return (
        weights.reshape(num_heads, 2, weights.shape[0] // num_heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


_HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if hf_name in top:
        return top[hf_name]
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_HF_TO_GGUF[rest]}"


def write_gguf(path: Path, hf_model: Any, tokenizer_dir: Path, quantization: str = "f32") -> Path:
    """Write ``hf_model`` as llama.cpp would: metadata, tokenizer, q/k rows permuted for llama.

    ``quantization``: "f32", "f16" or "q8_0" (2-D weights only; norms and biases stay f32).
    """
    config = hf_model.config
    arch = config.model_type
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    _add_tokenizer(writer, tokenizer_dir, pre="qwen2" if arch == "qwen2" else "smollm")
    tied = config.tie_word_embeddings
    for name, tensor in hf_model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        array = tensor.detach().float().numpy().copy()
        if arch == "llama" and ".q_proj." in name:
            array = _llama_cpp_permute(array, config.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            array = _llama_cpp_permute(array, config.num_key_value_heads)
        if array.ndim == 2 and quantization == "f16":
            writer.add_tensor(_gguf_name(name), array.astype(np.float16))
        elif array.ndim == 2 and quantization == "q8_0":
            quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(_gguf_name(name), quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(_gguf_name(name), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer_dir: Path, pre: str) -> None:
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    vocab: dict[str, int] = spec["model"]["vocab"]
    for added in spec["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {added["content"] for added in spec["added_tokens"] if added["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in special else 1 for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[config["bos_token"]])
    writer.add_eos_token_id(vocab[config["eos_token"]])
    writer.add_chat_template(config["chat_template"])


def quantize_roundtrip_q8_0(weight: torch.Tensor) -> torch.Tensor:
    """What a Q8_0 GGUF holds for ``weight`` [rows, cols]: rows are quantised independently."""
    array = weight.detach().float().numpy()
    quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
    return torch.from_numpy(gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.Q8_0).copy())


class CachingAttention:
    """A one-sequence KV cache: each call appends the new k/v and attends over everything so far.

    Lets the tests decode incrementally (new tokens only, positions continuing) the way the
    engine's runner does, checked against the full-recompute DenseCausalAttention.
    """

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def __call__(self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if layer_index in self.keys:
            k = torch.cat([self.keys[layer_index], k])
            v = torch.cat([self.values[layer_index], v])
        self.keys[layer_index], self.values[layer_index] = k, v
        return causal_attention(q, k, v)
