"""``RequestOutput.push_and_release`` (the engine's path for requests without stop strings or a
Guardian) returns and leaves exactly what ``push`` followed by ``release`` does."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lil_sparse.engine.request_output import RequestOutput
from lil_sparse.loading import Tokenizer

TEXT = "Multi-byte: naïve café, 你好，世界! 🙂👍🏽 def add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_folder(tiny_model_dir)


def state(output: RequestOutput) -> tuple[object, ...]:
    return (output.decoded, output.text_ends, output.logprobs, output.emitted, output.released)


def test_push_and_release_equals_push_then_release(tokenizer: Tokenizer) -> None:
    rng = random.Random(3)
    for trial in range(60):
        if trial % 2:
            ids = tokenizer.encode(TEXT)
        else:
            ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 50))]
        plain, fast = RequestOutput(tokenizer, ()), RequestOutput(tokenizer, ())
        for index, token in enumerate(ids):
            logprob = -rng.random()
            # Mostly every token released, sometimes fewer (a smaller upto clamps like release).
            upto = index + 1 if rng.random() < 0.8 else rng.randrange(0, index + 2)
            assert plain.push(token, logprob) is False
            first, last, logprobs, text = plain.release(upto)
            assert fast.push_and_release(token, logprob, upto) == (first, last, text)
            assert fast.logprobs[first:last] == logprobs
            assert state(fast) == state(plain)
        assert fast.finish(ids) == plain.finish(ids)
        assert fast.emitted == plain.emitted == tokenizer.decode(ids)


def test_push_and_release_refuses_a_request_with_stop_strings(tokenizer: Tokenizer) -> None:
    output = RequestOutput(tokenizer, ("\n",))
    with pytest.raises(ValueError, match="stop strings"):
        output.push_and_release(5, -0.5, 1)
