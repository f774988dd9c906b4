"""Tokenizer wrapper, chat templates and the incremental detokenizer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lil_sparse.loading import IncrementalDetokenizer, Tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Multi-byte: naïve café, Ærøskøbing, 你好，世界! 🙂👍🏽 and a family 👨‍👩‍👧 emoji.",
    "  leading spaces,\ttabs\n\nnew lines and trailing spaces   ",
    "def add(a, b):\n    return a + b  # ∑ ≤ ∞\n",
    "\\boxed{42} — em dash, “quotes” and ½ fractions",
]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_folder(tokenizer_dir)


def stream(
    tokenizer: Tokenizer, prompt_ids: list[int], output_ids: list[int], chunk_sizes: list[int]
) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, prompt_ids)
    deltas, start = [], 0
    for size in chunk_sizes:
        deltas.append(detokenizer.push(output_ids[start : start + size]))
        start += size
    deltas.append(detokenizer.push(output_ids[start:]))
    deltas.append(detokenizer.flush())
    assert detokenizer.text == "".join(deltas)
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_decode_one_token_at_a_time(tokenizer: Tokenizer, text: str) -> None:
    prompt_ids = tokenizer.encode("<|im_start|>assistant\n")
    output_ids = tokenizer.encode(text)
    deltas = stream(tokenizer, prompt_ids, output_ids, [1] * len(output_ids))
    assert "".join(deltas) == tokenizer.decode(output_ids) == text
    # A byte-level vocabulary splits emoji and CJK into byte tokens: no delta may show a half character.
    assert not any("\ufffd" in delta for delta in deltas)


def test_deltas_concatenate_to_decode_random_chunks_and_ids(tokenizer: Tokenizer) -> None:
    """Property over random chunkings and random (often invalid UTF-8) id sequences."""
    rng = random.Random(0)
    for trial in range(200):
        if trial % 2:
            output_ids = tokenizer.encode(rng.choice(TEXTS))
        else:
            output_ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 40))]
        chunks = [rng.randrange(0, 4) for _ in range(rng.randrange(0, 12))]
        prompt_ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(0, 8))]
        deltas = stream(tokenizer, prompt_ids, output_ids, chunks)
        assert "".join(deltas) == tokenizer.decode(output_ids), (prompt_ids, output_ids, chunks)


def test_special_tokens_are_dropped_from_text(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("hello<|im_end|>")
    assert ids[-1] == tokenizer.token_to_id("<|im_end|>")  # matched whole, not cut into pieces
    assert tokenizer.decode(ids) == "hello"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "hello<|im_end|>"
    assert "".join(stream(tokenizer, [], ids, [1] * len(ids))) == "hello"


def test_tokenizer_fields(tokenizer: Tokenizer) -> None:
    assert tokenizer.vocab_size == 384
    assert tokenizer.eos_token_ids == frozenset({tokenizer.token_to_id("<|im_end|>")})
    assert tokenizer.bos_token_id == tokenizer.token_to_id("<|endoftext|>")
    assert tokenizer.encode("") == []


def test_chat_template_renders(tokenizer: Tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.apply_chat_template(messages) == expected
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=False) == expected.removesuffix(
        "<|im_start|>assistant\n"
    )


def test_chat_template_matches_transformers(tokenizer_dir: Path, tmp_path: Path) -> None:
    """A template using the HF extras (raise_exception, tojson, loop controls, bos_token) renders
    exactly as transformers renders it."""
    from transformers import AutoTokenizer

    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}"
        "{% endif %}{% if loop.index > 3 %}{% break %}{% endif %}"
        "<{{ m['role'] }}>{{ m['content'] | tojson }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text((tokenizer_dir / name).read_text())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": template}))
    ours = Tokenizer.from_folder(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    messages = [{"role": "user", "content": f"q{i} “ü” 🙂"} for i in range(5)]
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(messages) == expected
    with pytest.raises(ValueError, match="no tools"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_missing_chat_template_is_a_clear_error(tokenizer_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text((tokenizer_dir / "tokenizer.json").read_text())
    tokenizer = Tokenizer.from_folder(tmp_path)
    with pytest.raises(ValueError, match="no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_malformed_message_is_a_clear_error(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"content": "no role"}])


def test_save_round_trip(tokenizer: Tokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path)
    again = Tokenizer.from_folder(tmp_path)
    assert again.encode(TEXTS[1]) == tokenizer.encode(TEXTS[1])
    assert again.chat_template == tokenizer.chat_template
    assert (again.bos_token_id, again.eos_token_ids) == (tokenizer.bos_token_id, tokenizer.eos_token_ids)
