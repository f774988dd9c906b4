"""GGUF loading: tiny GGUFs written as llama.cpp does load to the weights and logits of their HF source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_checkpoints import build_hf_checkpoint, quantize_roundtrip_q8_0, write_gguf

from lil_sparse.loading import Tokenizer, load_model
from lil_sparse.loading.convert import convert_gguf
from lil_sparse.loading.gguf_model import unpermute_rotary_rows
from lil_sparse.models import DenseCausalAttention

CASES = {
    "llama-f32": ("llama", False, "f32"),
    "llama-tied-f16": ("llama", True, "f16"),
    "llama-q8_0": ("llama", False, "q8_0"),
    "qwen2-f32": ("qwen2", False, "f32"),
    "qwen2-tied-q8_0": ("qwen2", True, "q8_0"),
}


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def gguf_case(request: Any, tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    architecture, tied, quantization = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    _, hf_model = build_hf_checkpoint(folder / "hf", tokenizer_dir, architecture, tie_word_embeddings=tied)
    path = write_gguf(folder / f"{request.param}.gguf", hf_model, tokenizer_dir, quantization)
    return {"path": path, "hf_model": hf_model, "quantization": quantization, "folder": folder}


def expected_weight(name: str, tensor: torch.Tensor, quantization: str) -> torch.Tensor:
    if tensor.dim() != 2 or quantization == "f32":
        return tensor.float()
    if quantization == "f16":
        return tensor.half().float()
    return quantize_roundtrip_q8_0(tensor)


def test_weights_equal_the_hf_source(gguf_case: dict[str, Any]) -> None:
    """Every tensor, q/k included (permuted in the file for llama), is the HF tensor after the
    file's own rounding: exactly equal for f32, f16 and Q8_0 alike."""
    loaded = load_model(gguf_case["path"], torch.float32, "cpu")
    ours = loaded.model.state_dict()
    hf_state = gguf_case["hf_model"].state_dict()
    tied = loaded.config.tie_word_embeddings
    expected_names = {n for n in hf_state if not (tied and n == "lm_head.weight")}
    assert set(ours) == expected_names
    for name in expected_names:
        expected = expected_weight(name, hf_state[name], gguf_case["quantization"])
        assert torch.equal(ours[name], expected), name


def test_config_and_tokenizer_from_metadata(gguf_case: dict[str, Any], tokenizer_dir: Path) -> None:
    loaded = load_model(gguf_case["path"], torch.float32, "cpu")
    hf_config = gguf_case["hf_model"].config
    config = loaded.config
    assert config.architecture == hf_config.model_type
    assert (config.num_layers, config.hidden_size, config.intermediate_size) == (2, 64, 128)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.vocab_size) == (4, 2, 16, 384)
    assert config.rope_theta == hf_config.rope_parameters["rope_theta"]
    assert config.tie_word_embeddings == hf_config.tie_word_embeddings
    assert config.attention_bias == (config.architecture == "qwen2")
    reference = Tokenizer.from_folder(tokenizer_dir)
    text = "Natalia sold 48 clips in April, then half as many in May. ¿Cuántos? 你好 🙂\n  def f(x1234):"
    if (
        config.architecture == "llama"
    ):  # written with GPT-2's split ("smollm"), as the tiny tokenizer was trained
        assert loaded.tokenizer.encode(text) == reference.encode(text)
    # Either split ("qwen2" for qwen2) must tokenize as transformers' own GGUF tokenizer does.
    from transformers import AutoTokenizer

    path = gguf_case["path"]
    hf_tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert loaded.tokenizer.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False)
    assert loaded.tokenizer.encode("<|im_start|>user\nhi<|im_end|>")[0] == reference.token_to_id(
        "<|im_start|>"
    )
    assert loaded.tokenizer.eos_token_ids == frozenset({2, 0})  # <|im_end|>, and <|endoftext|> as llama.cpp
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.tokenizer.apply_chat_template(messages) == reference.apply_chat_template(messages)


def test_logits_match_the_hf_source(gguf_case: dict[str, Any]) -> None:
    """Logits equal transformers' on the HF model carrying the file's (rounded) weights."""
    import copy

    loaded = load_model(gguf_case["path"], torch.float32, "cpu")
    hf_model = copy.deepcopy(gguf_case["hf_model"])
    rounded = {n: expected_weight(n, t, gguf_case["quantization"]) for n, t in hf_model.state_dict().items()}
    hf_model.load_state_dict(rounded)
    prompt = torch.randint(0, 384, (24,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = hf_model(prompt[None]).logits[0]
        ours = loaded.model.compute_logits(loaded.model(prompt, torch.arange(24), DenseCausalAttention()))
    assert float((ours - reference).norm() / reference.norm()) < 1e-4


def test_convert_round_trip(gguf_case: dict[str, Any]) -> None:
    """convert writes a folder that loads (ours and transformers') to the GGUF's weights in bf16."""
    from transformers import AutoModelForCausalLM

    out = convert_gguf(gguf_case["path"], gguf_case["folder"] / "converted")
    from_gguf = load_model(gguf_case["path"], torch.bfloat16, "cpu")
    from_folder = load_model(out, torch.bfloat16, "cpu")
    assert from_folder.config == from_gguf.config
    gguf_state, folder_state = from_gguf.model.state_dict(), from_folder.model.state_dict()
    assert set(gguf_state) == set(folder_state)
    assert all(torch.equal(gguf_state[n], folder_state[n]) for n in gguf_state)
    assert from_folder.tokenizer.eos_token_ids == from_gguf.tokenizer.eos_token_ids
    assert from_folder.tokenizer.chat_template == from_gguf.tokenizer.chat_template
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    prompt = torch.randint(0, 384, (10,), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        reference = hf(prompt[None]).logits[0]
        ours = from_folder.model.float().compute_logits(
            from_folder.model.float()(prompt, torch.arange(10), DenseCausalAttention())
        )
    assert float((ours - reference).norm() / reference.norm()) < 1e-4


def test_unpermute_inverts_llama_cpp_permute() -> None:
    from tiny_checkpoints import _llama_cpp_permute

    weight = torch.arange(8 * 16 * 3, dtype=torch.float32).reshape(8 * 16, 3)  # 8 heads of dim 16
    permuted = torch.from_numpy(_llama_cpp_permute(weight.numpy(), 8))
    assert not torch.equal(permuted, weight)
    assert torch.equal(unpermute_rotary_rows(permuted, 8), weight)
    # Within a head, HF's halves layout pairs row i with row i + 8; llama.cpp makes them adjacent.
    assert torch.equal(permuted[1], weight[8])
