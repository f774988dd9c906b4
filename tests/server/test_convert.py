"""Proto <-> engine conversion, without a server."""

from __future__ import annotations

import asyncio

import pytest
from lil_client._proto.lil_sparse.v1 import options_pb2, report_pb2, service_pb2

from lil_sparse.events import (
    FinishReason,
    GuardianCheckRecord,
    GuardianReport,
    KVReport,
    RequestReport,
    Timings,
    TokenEvent,
)
from lil_sparse.options import RequestOptions, SamplingOptions, SparseOptions
from server import convert, prompt_input
from server.errors import InvalidArgument
from server.servicer import _stream

DEFAULTS = RequestOptions(
    sampling=SamplingOptions(temperature=0.7, top_p=0.9), sparse=SparseOptions(policy="quest")
)


def test_absent_fields_take_defaults_and_explicit_zero_is_kept() -> None:
    request = service_pb2.GenerateRequest(text="x")
    request.sampling.temperature = 0.0  # explicit zero: greedy, not "use the default 0.7"
    request.sparse.budget_tokens = 64
    request.guardian.mode = options_pb2.GUARDIAN_MODE_INCREMENTAL
    request.stopping.stop_strings.append("\n\n")
    options = convert.options_from_request(request, DEFAULTS, max_new_tokens_limit=4096)
    assert options.sampling == SamplingOptions(temperature=0.0, top_p=0.9)
    assert options.sparse == SparseOptions(policy="quest", budget_tokens=64)
    assert options.guardian.mode == "incremental"
    assert options.stopping.stop_strings == ("\n\n",)
    assert options.stopping.max_new_tokens == DEFAULTS.stopping.max_new_tokens


def test_policy_enum_overrides_default() -> None:
    request = service_pb2.GenerateRequest(text="x")
    request.sparse.policy = options_pb2.POLICY_H2O
    assert convert.options_from_request(request, DEFAULTS, 4096).sparse.policy == "h2o"


def test_resolved_options_have_every_field_set() -> None:
    resolved = convert.resolved_options_message(RequestOptions(sampling=SamplingOptions(seed=7)))
    assert resolved.sampling.HasField("temperature") and resolved.sampling.seed == 7
    assert resolved.sparse.policy == options_pb2.POLICY_FULL
    assert (
        resolved.guardian.HasField("enabled") and resolved.guardian.source == options_pb2.GUARDIAN_SOURCE_TEXT
    )
    assert not convert.resolved_options_message(RequestOptions()).sampling.HasField("seed")


class _CharTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False, parse_special: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def encode_chat(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        parse_special_in_content: bool = False,
    ) -> list[int]:
        return self.encode("".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>")


def test_chat_input_uses_the_template() -> None:
    request = service_pb2.GenerateRequest()
    request.chat.messages.add(role="user", content="hi")
    assert prompt_input.prompt_token_ids(request, _CharTokenizer()) == [ord(c) for c in "<user>hi<assistant>"]


@pytest.mark.parametrize("role", ["", "robot", "System", "tool"])
def test_chat_message_with_an_unknown_role_is_invalid(role: str) -> None:
    request = service_pb2.GenerateRequest()
    request.chat.messages.add(role="user", content="hi")
    request.chat.messages.add(role=role, content="hi")
    limits = prompt_input.PromptLimits(
        max_prompt_bytes=100, max_new_tokens_limit=8, max_context=64, vocab_size=9
    )
    expected = f"messages[1].role: must be one of system, user, assistant, got {role!r}"
    with pytest.raises(InvalidArgument) as raised:
        prompt_input.check_prompt_size(request, limits)
    assert str(raised.value) == expected


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, 0.0), ([3.0], 95, 3.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.5), ([0.0, 10.0], 95, 9.5)],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert convert.percentile(values, q) == pytest.approx(expected)


def _report() -> RequestReport:
    checks = [
        GuardianCheckRecord(4, 100, None, False, 0.001),
        GuardianCheckRecord(8, 104, 4, True, 0.002),
    ]
    return RequestReport(
        request_id="r",
        finish_reason=FinishReason.EARLY_STOP,
        prompt_tokens=3,
        completion_tokens=9,
        output_token_ids=list(range(9)),
        output_text="x" * 9,
        timings=Timings(0.1, 0.2, 0.8, 1.0, [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.5]),
        guardian=GuardianReport(True, checks, stop_step=8, applied_at_step=9, cpu_seconds=0.003),
        kv=KVReport(peak_pages=6, attended_pages_per_step=[2, 3, 3]),
    )


def test_finished_message_carries_reports() -> None:
    output = options_pb2.OutputOptions(return_guardian_trace=True)
    finished = convert.finished_response(_report(), output).finished
    assert finished.finish_reason == report_pb2.FINISH_REASON_EARLY_STOP
    assert (finished.usage.prompt_tokens, finished.usage.completion_tokens) == (3, 9)
    assert finished.timings.tbt_mean_seconds == pytest.approx(0.15)
    assert finished.timings.tbt_p50_seconds == pytest.approx(0.1)
    assert finished.timings.tbt_p95_seconds == pytest.approx(0.36)
    g = finished.guardian
    assert (g.checks, list(g.compressed_bytes), g.stop_step, g.applied_at_step) == (2, [100, 104], 8, 9)
    assert not g.trace[0].HasField("growth_bytes") and g.trace[1].growth_bytes == 4
    assert list(finished.kv.attended_pages_per_step) == [2.0, 3.0, 3.0]
    assert finished.kv.mean_attended_pages == pytest.approx(8 / 3)
    without_trace = convert.finished_response(_report(), options_pb2.OutputOptions()).finished
    assert len(without_trace.guardian.trace) == 0 and without_trace.guardian.checks == 2


def test_stream_merges_events_that_piled_up() -> None:
    """A slow reader gets one chunk for everything queued, and every token in it."""

    async def run() -> list[service_pb2.GenerateResponse]:
        queue: asyncio.Queue = asyncio.Queue()
        for token in range(5):
            queue.put_nowait(TokenEvent("r", (token,), f"t{token}", (-0.5,)))
        queue.put_nowait(TokenEvent("r", (), "", (), FinishReason.LENGTH, _report()))
        output = options_pb2.OutputOptions(return_token_ids=True, return_logprobs=True)
        return [response async for response in _stream(queue, output)]

    chunk, finished = asyncio.run(run())
    assert list(chunk.chunk.token_ids) == [0, 1, 2, 3, 4] and chunk.chunk.token_count == 5
    assert chunk.chunk.text == "t0t1t2t3t4"
    assert list(chunk.chunk.logprobs) == [-0.5] * 5
    assert finished.WhichOneof("event") == "finished"
