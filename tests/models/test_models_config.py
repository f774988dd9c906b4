"""ModelConfig: reading HF config dicts (transformers 4 and 5 spellings) and validation."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from lil_sparse.models import ModelConfig, RopeScaling
from lil_sparse.models.rope import inverse_frequencies

QWEN25_CONFIG: dict[str, Any] = {  # Qwen2.5-Coder-1.5B-Instruct's config.json (transformers 4 style)
    "architectures": ["Qwen2ForCausalLM"],
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "max_position_embeddings": 32768,
    "model_type": "qwen2",
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
LLAMA32_CONFIG: dict[str, Any] = {  # Llama-3.2-1B's, in transformers 5's rope_parameters spelling
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "rms_norm_eps": 1e-05,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
    "vocab_size": 128256,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}


def test_reads_qwen2_config() -> None:
    config = ModelConfig.from_hf_dict(QWEN25_CONFIG, extra_eos_token_ids=(151645, 151643))
    assert config.architecture == "qwen2"
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.queries_per_kv_head) == (
        12,
        2,
        128,
        6,
    )
    assert config.attention_bias is True  # Qwen2 configs do not say so; the architecture has them
    assert config.rope_theta == 1e6 and config.rope_scaling is None
    assert config.eos_token_ids == (151645, 151643)


def test_reads_llama3_rope_parameters_and_eos_list() -> None:
    config = ModelConfig.from_hf_dict(LLAMA32_CONFIG)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == RopeScaling(32.0, 1.0, 4.0, 8192)
    assert config.eos_token_ids == (128001, 128008, 128009)
    assert config.tie_word_embeddings and not config.attention_bias


def test_llama3_inverse_frequencies_match_transformers() -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = LlamaConfig(**{k: v for k, v in LLAMA32_CONFIG.items() if k != "model_type"})
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    ours = inverse_frequencies(ModelConfig.from_hf_dict(LLAMA32_CONFIG))
    torch.testing.assert_close(ours, expected.float(), rtol=1e-6, atol=0)
    # Scaling must actually act: the slowest frequency is divided by the factor.
    plain = inverse_frequencies(
        dataclasses.replace(ModelConfig.from_hf_dict(LLAMA32_CONFIG), rope_scaling=None)
    )
    assert ours[-1] == pytest.approx(float(plain[-1]) / 32.0) and ours[0] == plain[0]


def test_to_hf_dict_round_trips() -> None:
    for source in (QWEN25_CONFIG, LLAMA32_CONFIG):
        config = ModelConfig.from_hf_dict(source)
        assert ModelConfig.from_hf_dict(config.to_hf_dict()) == config


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"num_key_value_heads": 5}, "num_kv_heads"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"eos_token_id": 10**6}, "eos_token_ids"),
    ],
)
def test_invalid_configs_raise_value_error_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_hf_dict(QWEN25_CONFIG | change)


def test_direct_construction_validates() -> None:
    good = ModelConfig.from_hf_dict(QWEN25_CONFIG)
    with pytest.raises(ValueError, match="head_dim"):
        dataclasses.replace(good, head_dim=127)
    with pytest.raises(ValueError, match="architecture"):
        dataclasses.replace(good, architecture="gpt2")
    with pytest.raises(ValueError, match=r"rope_scaling\.factor"):
        RopeScaling(0.5, 1.0, 4.0, 8192)
    with pytest.raises(dataclasses.FrozenInstanceError):
        good.hidden_size = 1  # type: ignore[misc]
