"""The memoized ``IncrementalDetokenizer`` emits exactly the deltas of the two-decode scheme.

The reference below is the detokenizer as it was before the memoization (vLLM's prefix/read offsets,
two ``decode`` calls per push), kept as the plain oracle. Both run over random id sequences (often
invalid UTF-8, multi-byte characters split across tokens) and multi-byte texts, with random push
sizes, on the tiny model's byte-level BPE and on SmolLM2-135M's tokenizer.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from lil_sparse.loading import IncrementalDetokenizer, Tokenizer
from lil_sparse.loading.converted_cache import converted_folder
from lil_sparse.loading.loader import resolve_source

TEXTS = [
    "Multi-byte: naïve café, Ærøskøbing, 你好，世界! 🙂👍🏽 and a family 👨‍👩‍👧 emoji.",
    "def add(a, b):\n    return a + b  # ∑ ≤ ∞\n",
    "  leading spaces,\ttabs\n\nnew lines 日本語のテキスト and trailing spaces   ",
]


class TwoDecodeReference:
    """The pre-memoization detokenizer: decode the prefix and the full window on every push."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool) -> None:
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = self.read = 0
        self.decode_calls = 0

    def _decode(self, ids: list[int]) -> str:
        self.decode_calls += 1
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_ids: list[int]) -> str:
        self.ids.extend(token_ids)
        prefix_text = self._decode(self.ids[self.prefix : self.read])
        full_text = self._decode(self.ids[self.prefix :])
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        prefix_text = self._decode(self.ids[self.prefix : self.read])
        full_text = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return full_text[len(prefix_text) :]


class CountingTokenizer:
    """A real tokenizer that counts its ``decode`` calls (delegates everything)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.inner, self.calls = tokenizer, 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.calls += 1
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def tiny_tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_folder(tokenizer_dir)


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Tokenizer:
    gguf, _ = resolve_source("smollm2")
    folder = converted_folder(gguf, torch.bfloat16)
    assert folder is not None
    return Tokenizer.from_folder(folder)


def id_streams(tokenizer: Tokenizer, seed: int, trials: int) -> list[tuple[list[int], list[int]]]:
    """(output ids, push sizes) pairs: random ids, encoded multi-byte texts, mixes of both."""
    rng = random.Random(seed)
    streams = []
    for trial in range(trials):
        kind = trial % 3
        random_ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 60))]
        text_ids = tokenizer.encode(rng.choice(TEXTS))
        ids = random_ids if kind == 0 else text_ids if kind == 1 else text_ids[:20] + random_ids + text_ids
        sizes = [1] * len(ids) if trial % 2 else [rng.randrange(0, 4) for _ in range(len(ids))]
        streams.append((ids, sizes))
    return streams


def run_both(
    tokenizer: Tokenizer, ids: list[int], sizes: list[int], skip: bool
) -> tuple[list[str], list[str]]:
    ours = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=skip)
    reference = TwoDecodeReference(tokenizer, skip)
    got, want, start = [], [], 0
    for size in sizes:
        chunk = ids[start : start + size]
        start += size
        got.append(ours.push(chunk))
        want.append(reference.push(chunk))
    got.append(ours.push(ids[start:]))
    want.append(reference.push(ids[start:]))
    got.append(ours.flush())
    want.append(reference.flush())
    assert ours.text == "".join(got)
    return got, want


@pytest.mark.parametrize("skip", [True, False])
def test_tiny_tokenizer_deltas_equal_the_two_decode_reference(tiny_tokenizer: Tokenizer, skip: bool) -> None:
    for ids, sizes in id_streams(tiny_tokenizer, seed=1, trials=150):
        got, want = run_both(tiny_tokenizer, ids, sizes, skip)
        assert got == want, (ids, sizes)
        assert "".join(got) == tiny_tokenizer.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("skip", [True, False])
def test_smollm2_tokenizer_deltas_equal_the_two_decode_reference(
    smollm2_tokenizer: Tokenizer, skip: bool
) -> None:
    for ids, sizes in id_streams(smollm2_tokenizer, seed=2, trials=90):
        got, want = run_both(smollm2_tokenizer, ids, sizes, skip)
        assert got == want, (ids, sizes)
        assert "".join(got) == smollm2_tokenizer.decode(ids, skip_special_tokens=skip)


def test_one_decode_per_token_in_the_steady_state(smollm2_tokenizer: Tokenizer) -> None:
    """ASCII text, one token per push: each push decodes once (its prefix is a cached single token)
    after the first request has filled the single-token cache; the reference decodes twice."""
    ids = smollm2_tokenizer.encode("The quick brown fox jumps over the lazy dog, then naps in the sun.")
    counting = CountingTokenizer(smollm2_tokenizer)
    for _ in range(2):  # the second request finds every single-token text cached
        counting.calls = 0
        detokenizer = IncrementalDetokenizer(counting, [])  # type: ignore[arg-type]
        deltas = [detokenizer.push([token]) for token in ids]
        assert "".join(deltas) == smollm2_tokenizer.decode(ids)
    assert counting.calls == len(ids)
    reference = TwoDecodeReference(smollm2_tokenizer, True)
    for token in ids:
        reference.push([token])
    assert reference.decode_calls == 2 * len(ids)
