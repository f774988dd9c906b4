"""Shared helpers for Guardian tests (imported by name; not a conftest, so no clash)
and texts: varied (never stops) and degenerate (repeats itself)."""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Callable

CHARS_PER_TOKEN = 4  # tests treat every 4 characters of text as one generated token


def seeded_prose(num_words: int, seed: int = 0) -> str:
    """English-looking prose: sentences of words drawn from a seeded vocabulary of 2,000 words."""
    rng = random.Random(seed)
    vocabulary = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(2000)
    ]
    sentences: list[str] = []
    word_count = 0
    while word_count < num_words:
        words = [rng.choice(vocabulary) for _ in range(rng.randint(6, 18))]
        word_count += len(words)
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def stdlib_source() -> str:
    """A long excerpt of real Python source (``json.decoder`` and ``json.encoder``)."""
    return inspect.getsource(json.decoder) + inspect.getsource(json.encoder)


def with_loop(text: str, sentences: int, repeats: int) -> str:
    """``text`` followed by its last ``sentences`` sentences repeated ``repeats`` times."""
    tail = ". ".join(text.rstrip(". ").split(". ")[-sentences:]) + ". "
    return text + " " + tail * repeats


def text_sequence_at(prompt: str, output: str) -> Callable[[int], bytes]:
    """``sequence_at(k)`` for text where one token is ``CHARS_PER_TOKEN`` characters."""
    return lambda k: (prompt + output[: k * CHARS_PER_TOKEN]).encode()
