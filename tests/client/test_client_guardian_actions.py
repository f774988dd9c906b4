"""Guardian shadow mode and the answer action end to end: Python client, lil-client CLI, server."""

from __future__ import annotations

import io
import math
import re
from typing import Any

import pytest
from lil_client import LilClient
from lil_client._proto.lil_sparse.v1 import options_pb2
from lil_client.cli import main
from lil_client.request import GenerateOptions, build_request

# Every check after the first says stop: no text grows by a million compressed bytes in 4 tokens.
SHADOW = {"guardian": True, "guardian_interval_tokens": 4, "guardian_threshold_bytes": 10**6}
# Shadow runs check every 8 tokens and end 6 tokens after the last check: more than the server's
# lag bound (4 tokens), so the engine has waited for that check before the request ends.
SHADOW_8 = {**SHADOW, "guardian_interval_tokens": 8}


def test_shadow_reports_the_would_stop_step_and_runs_to_the_end(client_server: Any) -> None:
    with LilClient(client_server.address) as client:
        shadow = client.complete(
            "hello",
            max_new_tokens=30,
            ignore_eos=True,
            guardian_shadow=True,
            return_token_ids=True,
            **SHADOW_8,
        )
        stopping = client.complete(
            "hello", max_new_tokens=30, ignore_eos=True, return_token_ids=True, **SHADOW_8
        )
    assert shadow.started is not None and shadow.started.options.guardian.shadow is True
    assert shadow.finish_reason == "length" and shadow.completion_tokens == 30
    g = shadow.guardian
    # Checks after tokens 8, 16 and 24; the second would stop.
    assert (g.enabled, g.shadow, g.checks, g.stop_step, g.applied_at_step) == (True, True, 3, 16, None)
    assert stopping.finish_reason == "early_stop" and stopping.guardian.shadow is False
    assert stopping.guardian.stop_step == 16 and stopping.started is not None
    assert stopping.started.options.guardian.shadow is False  # the server default
    # Greedy: the stopped run is a prefix of the shadow run.
    assert shadow.token_ids[: stopping.completion_tokens] == stopping.token_ids


def test_cli_prints_the_shadow_verdict(client_server: Any) -> None:
    out = io.StringIO()
    flags = ["--max-new-tokens", "30", "--ignore-eos", "--guardian", "--guardian-interval", "8"]
    flags += ["--guardian-threshold", "1000000", "--guardian-shadow"]
    assert main(["--address", client_server.address, "generate", "hello", *flags], out=out) == 0
    summary = out.getvalue().split("\n---\n")[1].strip().splitlines()
    assert summary[0] == "finish: length"
    assert re.fullmatch(r"guardian: shadow, 3 checks, would stop at token 16, [\d.]+ ms CPU", summary[3])


def test_request_carries_shadow_only_when_set() -> None:
    request = build_request("x", options=GenerateOptions(guardian_shadow=False))
    assert request.guardian.HasField("shadow") and request.guardian.shadow is False
    assert not build_request("x").guardian.HasField("shadow")  # absent: the server default


def test_answer_action_streams_thinking_then_the_answer(client_server: Any) -> None:
    with LilClient(client_server.address) as client:
        stream = client.generate(
            "hello",
            max_new_tokens=64,
            ignore_eos=True,
            guardian_action="answer",
            guardian_answer_max_tokens=3,
            return_logprobs=True,
            **SHADOW,
        )
        chunks = list(stream)
    summary = stream.summary
    assert summary.started is not None
    resolved = summary.started.options.guardian
    assert resolved.action == options_pb2.GUARDIAN_ACTION_ANSWER and resolved.answer_max_tokens == 3
    g = summary.guardian
    assert summary.finish_reason == "early_stop" and g.stop_step == 8
    assert g.answer_started_at == g.applied_at_step and g.answer_tokens == 3 and g.answer_prompt_tokens > 0
    assert summary.completion_tokens == g.answer_started_at + g.answer_prompt_tokens + 3
    # Answer tokens end every chunk they appear in, and all chunks after the first of them.
    marked = [(c.token_count, c.answer_tokens) for c in chunks]
    assert sum(a for _, a in marked) == g.answer_prompt_tokens + 3
    first = next(i for i, (_, a) in enumerate(marked) if a)
    assert all(a == n for n, a in marked[first + 1 :])
    logprobs = [x for c in chunks for x in c.logprobs]
    forced = logprobs[g.answer_started_at : g.answer_started_at + g.answer_prompt_tokens]
    assert all(math.isnan(x) for x in forced)


def test_cli_prints_the_answer_split(client_server: Any) -> None:
    out = io.StringIO()
    flags = ["--max-new-tokens", "64", "--ignore-eos", "--guardian", "--guardian-interval", "4"]
    flags += ["--guardian-threshold", "1000000", "--guardian-action", "answer"]
    flags += ["--guardian-answer-max-tokens", "3"]
    assert main(["--address", client_server.address, "generate", "hello", *flags], out=out) == 0
    summary = out.getvalue().split("\n---\n")[1].strip().splitlines()
    assert summary[0] == "finish: early_stop"
    assert re.fullmatch(
        r"guardian: on, \d+ checks, stop at token 8 \(applied \d+\), "
        r"answer: \d+ prompt \+ 3 tokens, [\d.]+ ms CPU",
        summary[3],
    )
    with pytest.raises(ValueError, match="guardian_action"):
        GenerateOptions(guardian_action="stop")
