"""Build tiny random-weight Hugging Face model folders for tests and demos.

The folder has everything :func:`lil_sparse.loading.load_model` reads: ``config.json``,
``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json`` with a chat template.
The tokenizer is a byte-level BPE trained on a small built-in corpus, so any text round-trips.

    python -m lil_sparse.testing.tiny_model OUTDIR [--architecture llama|qwen2] [--seed 0] [--num-layers 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Please reason step by step, and put your final "
    "answer within \\boxed{}. Natalia sold clips to 48 of her friends in April, and then she sold half "
    "as many clips in May. How many clips did Natalia sell altogether in April and May? "
    "def add(a, b):\n    return a + b\n0123456789 + - * / = ( ) [ ] { } < > ! ? , . ; : ' \" "
)


def _train_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tokenizer


def build_tiny_model(
    outdir: str | Path,
    architecture: str = "llama",
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 2048,
) -> Path:
    """Write a tiny random-weight model folder and return its path.

    Weights are fp32, drawn with ``torch.manual_seed(seed)``, so the same arguments give the
    same model. The vocabulary is 384 tokens; ``<|im_end|>`` (id 2) is the EOS token.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size=384)
    vocab_size = tokenizer.get_vocab_size()
    eos_id = tokenizer.token_to_id("<|im_end|>")
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.token_to_id("<|endoftext|>"),
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model: Any
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(**{**common, "rope_theta": 10000.0}))
    elif architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**{**common, "rope_theta": 1000000.0}))
    else:
        raise ValueError(f"architecture: expected 'llama' or 'qwen2', got {architecture!r}")
    with torch.no_grad():  # larger logits than the default init, so greedy choices are not near-ties
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": max_position_embeddings,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--architecture", default="llama", choices=("llama", "qwen2"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-layers", type=int, default=2)
    args = parser.parse_args()
    path = build_tiny_model(args.outdir, args.architecture, seed=args.seed, num_layers=args.num_layers)
    print(path)


if __name__ == "__main__":
    main()
