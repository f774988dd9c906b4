"""Exactly the promised text: stop strings end the text (kept, nothing after), text that may
start a stop string is held back until decided, and the detokenizer is flushed at every finish,
so the stream adds up to the report and the report to ``decode(ids)`` cut at the stop string."""

from __future__ import annotations

import pytest

from lil_sparse.engine import LLMEngine
from lil_sparse.engine.request_output import RequestOutput
from lil_sparse.engine.stop_checker import find_stop_end, stop_prefix_length
from lil_sparse.events import FinishReason, RequestReport
from lil_sparse.options import RequestOptions, SamplingOptions, StoppingOptions

PROMPT = "def add(a, b):\n    return a + b\nThe quick brown fox jumps over the lazy dog. "


def stream(
    engine: LLMEngine, prompt: list[int], options: RequestOptions
) -> tuple[str, list[int], RequestReport]:
    request_id = engine.add_request(prompt, options)
    text, tokens = "", []
    stops = options.stopping.stop_strings
    while engine.has_unfinished():
        for event in engine.step():
            assert event.request_id == request_id
            text += event.text_delta
            tokens += event.token_ids
            if event.report is not None:
                return text, tokens, event.report
            # Until the end, nothing sent may be the start of a stop string.
            assert stop_prefix_length(text, stops) == 0
    raise AssertionError("no report")


def cut_after_stop(text: str, stops: tuple[str, ...]) -> str:
    """The rule, written plainly: the text up to the end of the first stop string to complete."""
    for end in range(1, len(text) + 1):
        if any(text[:end].endswith(stop) for stop in stops):
            return text[:end]
    return text


def test_stop_rules_by_hand() -> None:
    assert find_stop_end("xx Paris", 0, ("Par",)) == 6
    assert find_stop_end("abcab", 0, ("cab", "bc")) == 3  # the first to complete wins
    assert find_stop_end("abcd", 3, ("bc",)) is None  # already searched up to offset 3
    assert stop_prefix_length("is P", ("Par",)) == 1
    assert stop_prefix_length("is Pa", ("Par", "a b")) == 2
    assert stop_prefix_length("is Pb", ("Par",)) == 0


def test_stop_string_inside_a_token_keeps_the_stop_and_nothing_after(engine: LLMEngine) -> None:
    tokenizer = engine.tokenizer
    ids = tokenizer.encode("The capital of France is Paris, and Paris is big.")
    output = RequestOutput(tokenizer, ("Par",))
    sent = ""
    for index, token in enumerate(ids):
        hit = output.push(token, 0.0)
        sent += output.release(index + 1)[3]
        # Never send text that could still be the start of the stop string.
        assert stop_prefix_length(sent, ("Par",)) == 0 or hit
        if hit:
            break
    sent += output.finish(ids[: index + 1])[3]
    assert sent == output.emitted == "The capital of France is Par"


@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_stop_strings_from_the_output_end_the_text_there(engine: LLMEngine, width: int) -> None:
    prompt = engine.tokenizer.encode(PROMPT)
    plain = StoppingOptions(max_new_tokens=60, ignore_eos=True)
    base = engine.generate([prompt], [RequestOptions(stopping=plain)])[0]
    full_text = base.output_text
    assert full_text == engine.tokenizer.decode(base.output_token_ids)
    checked = 0
    for start in range(0, len(full_text) - width, 2):
        stop = full_text[start : start + width]
        if "\ufffd" in stop:  # an incomplete character is final only once the next token decides it
            continue
        options = RequestOptions(
            stopping=StoppingOptions(max_new_tokens=60, stop_strings=(stop, "\x00never"), ignore_eos=True)
        )
        text, tokens, report = stream(engine, prompt, options)
        expected = cut_after_stop(full_text, (stop,))
        assert report.finish_reason == FinishReason.STOP_STRING
        assert text == report.output_text == expected
        assert tokens == report.output_token_ids == base.output_token_ids[: report.completion_tokens]
        # The last kept token is the one whose text completed the stop string.
        decoded = engine.tokenizer.decode(report.output_token_ids)
        before = engine.tokenizer.decode(report.output_token_ids[:-1])
        assert decoded.startswith(expected) and not before.startswith(expected)
        checked += 1
    assert checked >= 10
    assert engine.pool.num_used == 0


def test_stream_equals_report_equals_decode_for_every_finish(engine: LLMEngine) -> None:
    """Sampled outputs of the random tiny model are full of lone UTF-8 bytes, so many requests
    end inside a multi-byte character; the flush must keep that text."""
    prompt = engine.tokenizer.encode(PROMPT)
    ended_inside_a_character = 0
    for seed in range(24):
        options = RequestOptions(
            sampling=SamplingOptions(temperature=1.5, seed=seed),
            stopping=StoppingOptions(max_new_tokens=3 + seed % 9, ignore_eos=seed % 2 == 0),
        )
        text, tokens, report = stream(engine, prompt, options)
        decoded = engine.tokenizer.decode(report.output_token_ids)
        assert text == report.output_text == decoded
        assert tokens == report.output_token_ids
        assert report.finish_reason in (FinishReason.LENGTH, FinishReason.EOS)
        detokenizer = RequestOutput(engine.tokenizer, ()).detokenizer
        streamed = "".join(detokenizer.push([t]) for t in report.output_token_ids)
        ended_inside_a_character += streamed != decoded  # the incremental text alone lost bytes
    assert ended_inside_a_character > 0


def test_a_request_ending_inside_a_multibyte_character_keeps_its_bytes(engine: LLMEngine) -> None:
    tokenizer = engine.tokenizer
    ids = tokenizer.encode("caf\u00e9 \u2603")  # é is 2 bytes, the snowman 3: byte tokens here
    for cut in range(1, len(ids) + 1):
        output = RequestOutput(tokenizer, ())
        sent = "".join(output.release(i + 1)[3] for i, t in enumerate(ids[:cut]) if not output.push(t, 0.0))
        sent += output.finish(ids[:cut])[3]
        assert sent == output.emitted == tokenizer.decode(ids[:cut])
    # With a stop string found only once the last bytes arrive at the flush.
    output = RequestOutput(tokenizer, ("\u2603",))
    for index, token in enumerate(ids):
        assert not output.push(token, 0.0) or index == len(ids) - 1
        output.release(index + 1)
    _, _, _, _, stopped = output.finish(ids)
    assert stopped and output.emitted == "caf\u00e9 \u2603"
