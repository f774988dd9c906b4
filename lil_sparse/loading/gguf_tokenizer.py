"""Build a :class:`Tokenizer` from a GGUF file's ``tokenizer.*`` metadata.

Byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``: SmolLM2, Qwen2, Llama 3) are built
directly with ``tokenizers``, which takes well under a second. Anything else (SentencePiece) goes
through transformers' GGUF tokenizer conversion, which is slower but knows more formats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from lil_sparse.loading.gguf_metadata import GGUFMetadata
from lil_sparse.loading.tokenizer import Tokenizer

# How text is split before BPE, by llama.cpp's ``tokenizer.ggml.pre`` name. None means GPT-2's
# own split (ByteLevel with use_regex=True).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS: dict[str, str | None] = {
    "default": None,
    "gpt2": None,
    "gpt-2": None,
    "smollm": None,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
}
# Token texts llama.cpp treats as end-of-generation besides the declared EOS/EOT ids.
_END_OF_GENERATION_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>")
_CONTROL = 3
_USER_DEFINED = 4


def tokenizer_from_gguf(metadata: GGUFMetadata, path: Path) -> Tokenizer:
    """The tokenizer a GGUF file describes, with its chat template and end-of-generation ids."""
    tokens: list[str] = metadata.strings("tokenizer.ggml.tokens")
    model_type = metadata.get("tokenizer.ggml.model")
    backend = _byte_level_bpe(metadata, tokens) if model_type == "gpt2" else _via_transformers(path)
    bos_id = metadata.get("tokenizer.ggml.bos_token_id")
    eos_id = metadata.get("tokenizer.ggml.eos_token_id")
    token_types = (
        metadata.ints("tokenizer.ggml.token_type") if "tokenizer.ggml.token_type" in metadata else []
    )
    eos_ids = {int(i) for i in (eos_id, metadata.get("tokenizer.ggml.eot_token_id")) if i is not None}
    eos_ids |= {
        index
        for index, (text, kind) in enumerate(zip(tokens, token_types, strict=False))
        if kind == _CONTROL and text in _END_OF_GENERATION_TEXTS
    }
    return Tokenizer(
        backend,
        chat_template=metadata.get("tokenizer.chat_template"),
        bos_token=tokens[bos_id] if bos_id is not None else None,
        eos_token=tokens[eos_id] if eos_id is not None else None,
        extra_eos_token_ids=eos_ids,
    )


def _byte_level_bpe(metadata: GGUFMetadata, tokens: list[str]) -> BackendTokenizer:
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZER_SPLITS:
        raise ValueError(
            f"tokenizer.ggml.pre: pre-tokenizer {pre!r} is not supported; "
            f"known: {sorted(PRE_TOKENIZER_SPLITS)}"
        )
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = [_merge_pair(merge) for merge in metadata.strings("tokenizer.ggml.merges")]
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS[pre]
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre in ("qwen2", "deepseek-r1-qwen"):
        backend.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json
    backend.decoder = decoders.ByteLevel()
    _add_special_tokens(backend, tokens, metadata)
    return backend


def _merge_pair(merge: str) -> tuple[str, str]:
    # Byte-level tokens spell a space as "Ġ", so the single space separates the two halves.
    first, second = merge.split(" ", 1)
    return first, second


def _add_special_tokens(backend: BackendTokenizer, tokens: list[str], metadata: GGUFMetadata) -> None:
    # Control tokens (<|im_start|>...) must match whole in text and are special (skipped when
    # decoding); user-defined ones (<think>) match whole but are ordinary text.
    if "tokenizer.ggml.token_type" not in metadata:
        return
    kinds = metadata.ints("tokenizer.ggml.token_type")
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, k in zip(tokens, kinds, strict=True)
        if k == _CONTROL
    ]
    plain = [
        AddedToken(t, special=False, normalized=False)
        for t, k in zip(tokens, kinds, strict=True)
        if k == _USER_DEFINED
    ]
    if special:
        backend.add_special_tokens(special)
    if plain:
        backend.add_tokens(plain)


def _via_transformers(path: Path) -> BackendTokenizer:
    from transformers import AutoTokenizer

    hf_tokenizer: Any = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return hf_tokenizer.backend_tokenizer
