"""Guardian stop action "answer": the stop ends the thinking, the model gets a short answer."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import pytest

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.engine.guardian_driver import GuardianDriver
from lil_sparse.engine.request_output import RequestOutput
from lil_sparse.events import FinishReason, TokenEvent
from lil_sparse.guardian import zlib_compressed_size
from lil_sparse.guardian.answer import ANSWER_SUFFIX, AnswerPhase, answer_prompt
from lil_sparse.options import GuardianOptions, RequestOptions, StoppingOptions
from lil_sparse.testing.tiny_model import build_tiny_model

PROMPT = "Please reason step by step, and put your final answer within \\boxed{}. "


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMEngine]:
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-answer"), architecture="llama")
    eng = LLMEngine.from_config(
        EngineConfig(model=str(folder), kv_cache_tokens=4096, max_batch_size=8, guardian_workers=0)
    )
    yield eng
    eng.close()


def request(
    action: str, max_new: int = 200, answer_max_tokens: int = 5, stop: tuple[str, ...] = ()
) -> RequestOptions:
    # A threshold of 10^9 bytes: the second check (after 20 tokens) says stop.
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=max_new, ignore_eos=True, stop_strings=stop),
        guardian=GuardianOptions(
            enabled=True,
            interval_tokens=10,
            threshold_bytes=10**9,
            action=action,  # type: ignore[arg-type]
            answer_max_tokens=answer_max_tokens,
        ),
    )


def run(engine: LLMEngine, prompt_ids: list[int], options: RequestOptions) -> list[TokenEvent]:
    request_id = engine.add_request(prompt_ids, options)
    events: list[TokenEvent] = []
    while engine.has_unfinished():
        events += [e for e in engine.step() if e.request_id == request_id]
    return events


def test_answer_appends_the_prompt_then_decodes_the_answer_budget(engine: LLMEngine) -> None:
    prompt_ids = engine.tokenizer.encode(PROMPT)
    forced = engine.tokenizer.encode(ANSWER_SUFFIX)
    truncated = engine.generate([prompt_ids], [request("truncate")])[0]
    events = run(engine, prompt_ids, request("answer"))
    report = events[-1].report
    assert report is not None and truncated.finish_reason == report.finish_reason == FinishReason.EARLY_STOP
    assert truncated.completion_tokens == 20
    # Thinking (the truncated output), the forced prompt, then 5 tokens of the model's own.
    ids = report.output_token_ids
    assert len(ids) == 20 + len(forced) + 5 == report.completion_tokens
    assert ids[:20] == truncated.output_token_ids
    assert ids[20 : 20 + len(forced)] == forced
    assert report.output_text.startswith(truncated.output_text + ANSWER_SUFFIX)
    g = report.guardian
    assert (g.stop_step, g.applied_at_step, g.answer_started_at) == (20, 20, 20)
    assert (g.answer_prompt_tokens, g.answer_tokens) == (len(forced), 5)
    assert [c.generated_tokens for c in g.checks] == [10, 20]  # no check after the stop
    # The stream tells thinking from answer, and forced tokens carry no sampled logprob.
    token_events = [e for e in events if e.token_ids]
    assert [e.answer for e in token_events] == [False] * 20 + [True] * (len(forced) + 5)
    logprobs = [e.logprobs[0] for e in token_events]
    assert all(math.isnan(x) for x in logprobs[20 : 20 + len(forced)])
    assert not any(math.isnan(x) for x in logprobs[:20] + logprobs[20 + len(forced) :])
    assert "".join(e.text_delta for e in events) == report.output_text


def test_answer_pauses_at_each_pending_check_and_equals_the_inline_run(engine: LLMEngine) -> None:
    gate = threading.Event()
    started = threading.Event()

    def gated_size(data: bytes) -> int:
        started.set()
        gate.wait(timeout=30)
        return zlib_compressed_size(data)

    prompt_ids = engine.tokenizer.encode(PROMPT)
    plain = RequestOptions(stopping=StoppingOptions(max_new_tokens=30, ignore_eos=True))
    inline, solo = engine.generate([prompt_ids, prompt_ids], [request("answer"), plain])
    engine.guardian.shutdown()
    engine.guardian = GuardianDriver(workers=2, max_lag_steps=4, compressed_size=gated_size)
    try:
        answer_id = engine.add_request(prompt_ids, request("answer"))
        plain_id = engine.add_request(prompt_ids, plain)
        events: dict[str, list[TokenEvent]] = {answer_id: [], plain_id: []}

        def step() -> None:
            for event in engine.step():
                events[event.request_id].append(event)

        while sum(len(e.token_ids) for e in events[answer_id]) < 10:
            step()
        assert started.wait(timeout=30)  # the check after token 10 runs, held by the gate
        seq = engine._sequences[answer_id]
        for _ in range(6):
            step()
        # Paused at the pending check itself (no token decoded past it: a stop will have nothing
        # to discard); its batch mate went on every step.
        assert seq.num_output_tokens == 10 and engine.guardian.lagging(seq)
        assert sum(len(e.token_ids) for e in events[plain_id]) == 10 + 6
        gate.set()
        while engine.has_unfinished():
            step()
    finally:
        gate.set()
        engine.guardian.shutdown()
        engine.guardian = GuardianDriver(workers=0, max_lag_steps=engine.config.guardian_max_lag_steps)
    report = events[answer_id][-1].report
    assert report is not None and report.finish_reason == FinishReason.EARLY_STOP
    assert report.output_token_ids == inline.output_token_ids
    assert report.guardian.answer_started_at == report.guardian.applied_at_step == 20
    assert [t for e in events[answer_id] for t in e.token_ids] == report.output_token_ids
    text = "".join(e.text_delta for e in events[answer_id])
    assert text == report.output_text == engine.tokenizer.decode(report.output_token_ids)
    assert [t for e in events[plain_id] for t in e.token_ids] == solo.output_token_ids
    assert engine.pool.num_used == 0


def test_text_of_the_forced_prompt_never_ends_the_request(engine: LLMEngine) -> None:
    prompt_ids = engine.tokenizer.encode(PROMPT)
    forced = engine.tokenizer.encode(ANSWER_SUFFIX)
    plain = engine.generate([prompt_ids], [request("answer")])[0]
    for own in (plain.output_token_ids[:20], plain.output_token_ids[20 + len(forced) :]):
        text = engine.tokenizer.decode(own)  # the model's own text says neither stop string
        assert "Final answer" not in text and "boxed" not in text
    events = run(engine, prompt_ids, request("answer", stop=("Final answer", "boxed")))
    report = events[-1].report
    assert report is not None and report.finish_reason == FinishReason.EARLY_STOP
    assert report.output_token_ids == plain.output_token_ids
    assert report.completion_tokens == 20 + len(forced) + 5
    assert report.output_text == engine.tokenizer.decode(report.output_token_ids)
    assert "".join(e.text_delta for e in events) == report.output_text


def test_a_stop_string_counts_only_if_it_ends_after_the_forced_text(engine: LLMEngine) -> None:
    tokenizer = engine.tokenizer
    output = RequestOutput(tokenizer, ("answer", ": \\boxed{4"))
    assert not any(output.push(token, 0.0, forced=True) for token in tokenizer.encode(ANSWER_SUFFIX))
    # "answer" lies wholly inside the forced text; ": \boxed{4" starts in it and ends after it.
    hits = [output.push(token, -1.0) for token in tokenizer.encode("42}")]
    assert any(hits) and output.decoded == ANSWER_SUFFIX + "4"
    *_, text, stopped = output.finish(tokenizer.encode(ANSWER_SUFFIX) + tokenizer.encode("42}"))
    assert stopped is True and output.emitted == text == ANSWER_SUFFIX + "4"


def test_the_length_cap_ends_the_answer_early_with_early_stop(engine: LLMEngine) -> None:
    prompt_ids = engine.tokenizer.encode(PROMPT)
    forced = engine.tokenizer.encode(ANSWER_SUFFIX)
    cap = 20 + len(forced) + 2
    report = engine.generate([prompt_ids], [request("answer", max_new=cap, answer_max_tokens=32)])[0]
    assert report.finish_reason == FinishReason.EARLY_STOP and report.completion_tokens == cap
    assert (report.guardian.answer_prompt_tokens, report.guardian.answer_tokens) == (len(forced), 2)


def test_truncate_reports_no_answer(engine: LLMEngine) -> None:
    report = engine.generate([engine.tokenizer.encode(PROMPT)], [request("truncate")])[0]
    g = report.guardian
    assert (g.answer_started_at, g.answer_prompt_tokens, g.answer_tokens) == (None, 0, 0)


def test_answer_prompt_closes_an_open_thinking_block() -> None:
    assert answer_prompt("user: 2+2?\nassistant: <think>\nfour, four, four") == "\n</think>" + ANSWER_SUFFIX
    assert answer_prompt("<think>\nfour</think> The answer is four, four") == ANSWER_SUFFIX
    assert answer_prompt("no thinking block at all") == ANSWER_SUFFIX


def test_answer_phase_forces_then_counts_and_options_validate() -> None:
    phase = AnswerPhase(thinking_tokens=7, prompt_token_ids=(11, 12), answer_max_tokens=2)
    assert phase.next_token(99, -0.5)[0::2] == (11, True)
    assert phase.next_token(98, -0.5)[0::2] == (12, True)
    assert not phase.done
    assert phase.next_token(97, -0.25) == (97, -0.25, False)
    assert not phase.done
    assert phase.next_token(96, -0.5) == (96, -0.5, False)
    assert phase.done
    assert GuardianOptions().action == "truncate" and GuardianOptions().answer_max_tokens == 32
    with pytest.raises(ValueError, match=r"^action: must be 'truncate' or 'answer'"):
        GuardianOptions(action="stop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^answer_max_tokens: must be >= 1"):
        GuardianOptions(answer_max_tokens=0)
