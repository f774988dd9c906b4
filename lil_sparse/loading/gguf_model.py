"""Read a llama/qwen2 GGUF file: its :class:`ModelConfig` and its weights under Hugging Face names.

llama.cpp's HF->GGUF converter permutes the rows of ``q_proj``/``k_proj`` of **llama**-arch models
(each head's rotary pairs go from HF's "halves" layout to adjacent pairs); we undo that so the
weights are HF's again. **qwen2**-arch files are written unpermuted (``Qwen2Model`` in
``convert_hf_to_gguf.py`` has no ``modify_tensors`` permute), so they are taken as they are.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from lil_sparse.loading.gguf_metadata import GGUFMetadata
from lil_sparse.models.config import ModelConfig

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def config_from_gguf(metadata: GGUFMetadata, eos_token_ids: tuple[int, ...] = ()) -> ModelConfig:
    """The model shape from ``general.architecture`` and the ``<arch>.*`` keys."""
    arch = metadata.require("general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"general.architecture: only 'llama' and 'qwen2' GGUFs are supported, got {arch!r}")
    tensor_shapes = {t.name: [int(n) for n in t.shape] for t in metadata.reader.tensors}
    if "rope_freqs.weight" in tensor_shapes:
        raise ValueError(
            "rope_freqs.weight: GGUFs with precomputed RoPE factors (Llama 3.1+) are not supported"
        )
    scaling_type = metadata.get(f"{arch}.rope.scaling.type", "none")
    if scaling_type not in ("none", None):
        raise ValueError(f"{arch}.rope.scaling.type: RoPE scaling {scaling_type!r} is not supported")
    hidden_size = int(metadata.require(f"{arch}.embedding_length"))
    num_heads = int(metadata.require(f"{arch}.attention.head_count"))
    head_dim = metadata.get(f"{arch}.attention.key_length") or metadata.get(f"{arch}.rope.dimension_count")
    return ModelConfig(
        architecture=arch,
        # GGUF shapes are innermost-first: token_embd is [hidden, vocab].
        vocab_size=tensor_shapes["token_embd.weight"][1],
        hidden_size=hidden_size,
        intermediate_size=int(metadata.require(f"{arch}.feed_forward_length")),
        num_layers=int(metadata.require(f"{arch}.block_count")),
        num_heads=num_heads,
        num_kv_heads=int(metadata.get(f"{arch}.attention.head_count_kv") or num_heads),
        head_dim=int(head_dim or hidden_size // num_heads),
        rope_theta=float(metadata.get(f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(metadata.require(f"{arch}.attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(metadata.get(f"{arch}.context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_shapes,
        attention_bias="blk.0.attn_q.bias" in tensor_shapes,
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=eos_token_ids,
    )


def hf_name(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise ValueError(f"GGUF tensor {gguf_name!r} has no counterpart in a llama/qwen2 model")


def unpermute_rotary_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's ``permute`` of q/k rows (adjacent rotary pairs -> HF halves layout).

    Args:
        weight: [num_heads * head_dim, ...] (a weight or a bias) as stored in the GGUF.
    Returns:
        The same shape, rows in HF order.
    """
    rows = weight.shape[0]
    rest = weight.shape[1:]
    return weight.reshape(num_heads, rows // num_heads // 2, 2, *rest).transpose(1, 2).reshape(weight.shape)


def gguf_state_dict(
    metadata: GGUFMetadata, config: ModelConfig, dtype: torch.dtype, device: str | torch.device
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, tensor)`` for every weight, dequantised to ``dtype`` on ``device``.

    One tensor at a time, so peak host memory is one float32 tensor, not the whole model.
    """
    for tensor in metadata.reader.tensors:
        name = hf_name(tensor.name)
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF is innermost-first
        if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            array = np.array(tensor.data, dtype=np.float32)  # a copy: the memmap is read-only
        else:
            array = dequantize(tensor.data, tensor.tensor_type)
        weight = torch.from_numpy(np.ascontiguousarray(array).reshape(shape))
        if config.architecture == "llama":
            if ".q_proj." in name:
                weight = unpermute_rotary_rows(weight, config.num_heads)
            elif ".k_proj." in name:
                weight = unpermute_rotary_rows(weight, config.num_kv_heads)
        yield name, weight.to(device=device, dtype=dtype)
