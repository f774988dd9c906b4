"""Our CausalLM against transformers' Llama/Qwen2 on the same weights, fp32: prefill and 32 decode steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_checkpoints import CachingAttention, build_hf_checkpoint

from lil_sparse.loading import load_model
from lil_sparse.models import DenseCausalAttention

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,  # small, so the 40-token test crosses all three bands
}
CASES: dict[str, dict[str, Any]] = {
    "llama": dict(architecture="llama"),
    "llama-tied": dict(architecture="llama", tie_word_embeddings=True),
    "llama-rope-llama3": dict(architecture="llama", rope_scaling=LLAMA3_SCALING),
    "qwen2": dict(architecture="qwen2"),
    "qwen2-tied": dict(architecture="qwen2", tie_word_embeddings=True),
}
DECODE_STEPS = 32
RELATIVE_TOLERANCE = 1e-4


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def checkpoint(
    request: Any, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Any, Path]:
    folder, hf_model = build_hf_checkpoint(
        tmp_path_factory.mktemp(request.param), tokenizer_dir, **CASES[request.param]
    )
    return load_model(folder, torch.float32, "cpu"), hf_model, folder


def test_config_read_from_folder(checkpoint: tuple[Any, Any, Path]) -> None:
    loaded, hf_model, _folder = checkpoint
    config = loaded.config
    assert config.architecture == hf_model.config.model_type
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 2, 16)
    assert config.tie_word_embeddings == hf_model.config.tie_word_embeddings
    assert (loaded.model.lm_head is None) == config.tie_word_embeddings
    assert config.attention_bias == (config.architecture == "qwen2")
    assert config.eos_token_ids == (2,)


def test_prefill_logits_match_transformers(checkpoint: tuple[Any, Any, Path]) -> None:
    loaded, hf_model, _folder = checkpoint
    prompt = torch.randint(0, 384, (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = hf_model(prompt[None]).logits[0]
        hidden = loaded.model(prompt, torch.arange(len(prompt)), DenseCausalAttention())
        ours = loaded.model.compute_logits(hidden)
    assert ours.dtype == torch.float32 and ours.shape == (40, 384)
    assert relative_error(ours, reference) < RELATIVE_TOLERANCE


def test_32_decode_steps_match_transformers(checkpoint: tuple[Any, Any, Path]) -> None:
    """transformers decodes greedily with its KV cache; we decode incrementally with a test KV cache
    (new token only, position continuing) and compare every step's logits along the same tokens."""
    loaded, hf_model, _folder = checkpoint
    prompt = torch.randint(0, 384, (12,), generator=torch.Generator().manual_seed(2))
    cache = CachingAttention()
    with torch.no_grad():
        out = hf_model(prompt[None], use_cache=True)
        past, hf_logits = out.past_key_values, out.logits[0, -1]
        ours = loaded.model.compute_logits(loaded.model(prompt, torch.arange(12), cache)[-1:])[0]
        sequence = prompt.tolist()
        for step in range(DECODE_STEPS):
            assert relative_error(ours, hf_logits) < RELATIVE_TOLERANCE, f"step {step}"
            token = int(hf_logits.argmax())
            assert int(ours.argmax()) == token, f"step {step}"
            sequence.append(token)
            out = hf_model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past, hf_logits = out.past_key_values, out.logits[0, -1]
            position = torch.tensor([len(sequence) - 1])
            ours = loaded.model.compute_logits(loaded.model(torch.tensor([token]), position, cache))[0]
        # The last step once more without a cache: full recompute must agree too.
        full = loaded.model(torch.tensor(sequence), torch.arange(len(sequence)), DenseCausalAttention())
        assert relative_error(loaded.model.compute_logits(full[-1:])[0], hf_logits) < RELATIVE_TOLERANCE


def test_varlen_batch_equals_separate_sequences(checkpoint: tuple[Any, Any, Path]) -> None:
    """Two sequences flattened into one call (no padding) give each the logits it gets alone."""
    loaded, _, _ = checkpoint
    generator = torch.Generator().manual_seed(3)
    first, second = (
        torch.randint(0, 384, (7,), generator=generator),
        torch.randint(0, 384, (11,), generator=generator),
    )
    model = loaded.model
    with torch.no_grad():
        batch = model(
            torch.cat([first, second]),
            torch.cat([torch.arange(7), torch.arange(11)]),
            DenseCausalAttention([7, 11]),
        )
        alone_first = model(first, torch.arange(7), DenseCausalAttention())
        alone_second = model(second, torch.arange(11), DenseCausalAttention())
    torch.testing.assert_close(batch, torch.cat([alone_first, alone_second]), rtol=1e-5, atol=1e-5)


def test_bfloat16_load_is_close_to_float32(checkpoint: tuple[Any, Any, Path]) -> None:
    loaded, _hf_model, folder = checkpoint
    prompt = torch.randint(0, 384, (16,), generator=torch.Generator().manual_seed(4))
    bf16 = load_model(folder, torch.bfloat16, "cpu")
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())
    with torch.no_grad():
        reference = loaded.model.compute_logits(
            loaded.model(prompt, torch.arange(16), DenseCausalAttention())
        )
        ours = bf16.model.compute_logits(bf16.model(prompt, torch.arange(16), DenseCausalAttention()))
    assert ours.dtype == torch.float32
    # bf16 keeps ~3 significant digits; through 2 layers the logits stay within a few percent.
    assert relative_error(ours, reference) < 0.05
