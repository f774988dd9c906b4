"""lil-client generate's --request-id, --token-ids, --logprobs, --guardian-trace and
--guardian-source (as lil-stream's) against a real server, and the library's Guardian trace."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from lil_client import GuardianCheck, LilClient
from lil_client.cli import main

from lil_sparse.guardian.guardian import zlib_compressed_size
from lil_sparse.guardian.sequence import sequence_bytes

# Checks after every 4 tokens; every check after the first says stop (no text grows by a million
# compressed bytes in 4 tokens), so a stopping run ends at token 8.
GUARDIAN_FLAGS = ["--guardian", "--guardian-interval", "4", "--guardian-threshold", "1000000"]
GUARDIAN = {"guardian": True, "guardian_interval_tokens": 4, "guardian_threshold_bytes": 10**6}


def _cli(address: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(["--address", address, "generate", "hello", "--raw", *argv], out=out), out.getvalue()


def _greedy_with_logprobs(address: str, max_new_tokens: int) -> tuple[tuple[int, ...], list[float]]:
    with LilClient(address) as client:
        stream = client.generate(
            "hello",
            max_new_tokens=max_new_tokens,
            ignore_eos=True,
            return_token_ids=True,
            return_logprobs=True,
        )
        logprobs = [logprob for chunk in stream for logprob in chunk.logprobs]
    return stream.summary.token_ids, logprobs


def test_text_output_adds_request_id_token_ids_and_logprobs(client_server: Any) -> None:
    token_ids, logprobs = _greedy_with_logprobs(client_server.address, 6)
    flags = ["--max-new-tokens", "6", "--ignore-eos", "--token-ids", "--logprobs"]
    code, output = _cli(client_server.address, *flags, "--request-id", "cli-text-1")
    assert code == 0
    lines = output.split("\n---\n")[1].splitlines()
    assert lines[0] == "finish: length" and len(lines) == 8  # the five summary lines, then three
    assert lines[5] == "request: cli-text-1"
    assert lines[6] == "token ids: " + " ".join(str(token) for token in token_ids)
    printed = lines[7].removeprefix("logprobs: ").split(" ")
    assert len(printed) == len(token_ids) == 6
    # Greedy: the same tokens, so the same log-probabilities (printed to 4 decimals).
    assert [float(value) for value in printed] == pytest.approx(logprobs, abs=2e-4)
    assert all(logprob <= 0 for logprob in logprobs)


def test_text_output_is_unchanged_without_the_flags(client_server: Any) -> None:
    code, output = _cli(client_server.address, "--max-new-tokens", "3", "--ignore-eos")
    assert code == 0
    lines = output.split("\n---\n")[1].splitlines()
    assert [line.split(":")[0] for line in lines] == ["finish", "tokens", "ttft", "guardian", "kv"]


def test_json_carries_request_id_token_ids_and_logprobs(client_server: Any) -> None:
    token_ids, logprobs = _greedy_with_logprobs(client_server.address, 5)
    flags = ["--json", "--max-new-tokens", "5", "--ignore-eos", "--request-id", "cli-json-1"]
    code, output = _cli(client_server.address, *flags, "--token-ids", "--logprobs")
    assert code == 0
    data = json.loads(output)
    assert data["request_id"] == "cli-json-1"
    assert data["completion_tokens"] == 5
    assert tuple(data["token_ids"]) == token_ids
    assert data["logprobs"] == pytest.approx(logprobs, abs=1e-6)
    code, output = _cli(client_server.address, "--json", "--max-new-tokens", "5", "--ignore-eos")
    plain = json.loads(output)
    assert plain["token_ids"] == [] and "logprobs" not in plain
    assert plain["request_id"] and plain["request_id"] != "cli-json-1"  # the server picked one


def test_library_guardian_trace_matches_the_report(client_server: Any) -> None:
    with LilClient(client_server.address) as client:
        traced = client.complete(
            "hello", max_new_tokens=30, ignore_eos=True, return_guardian_trace=True, **GUARDIAN
        )
        untraced = client.complete("hello", max_new_tokens=30, ignore_eos=True, **GUARDIAN)
    g = traced.guardian
    assert traced.finish_reason == "early_stop" and g.stop_step == 8
    assert len(g.trace) == g.checks == 2
    first, second = g.trace
    assert isinstance(first, GuardianCheck)
    assert (first.generated_tokens, first.growth_bytes, first.stop) == (4, None, False)
    assert (second.generated_tokens, second.stop) == (8, True)
    assert second.growth_bytes == second.compressed_bytes - first.compressed_bytes
    assert tuple(check.compressed_bytes for check in g.trace) == g.compressed_bytes
    assert untraced.guardian.trace == () and untraced.guardian.compressed_bytes == g.compressed_bytes


def test_cli_prints_the_guardian_trace(client_server: Any) -> None:
    flags = ["--max-new-tokens", "30", "--ignore-eos", *GUARDIAN_FLAGS, "--guardian-trace"]
    code, output = _cli(client_server.address, "--json", *flags)
    assert code == 0
    trace = json.loads(output)["guardian"]["trace"]
    assert [(c["generated_tokens"], c["stop"]) for c in trace] == [(4, False), (8, True)]
    first_bytes, second_bytes = (c["compressed_bytes"] for c in trace)
    assert trace[0]["growth_bytes"] is None and trace[1]["growth_bytes"] == second_bytes - first_bytes
    code, output = _cli(client_server.address, *flags)
    assert code == 0
    lines = output.split("\n---\n")[1].splitlines()
    assert lines[0] == "finish: early_stop"
    assert lines[5] == "guardian trace: 2 checks"
    assert re.fullmatch(rf"  token 4: {first_bytes} bytes, first check, go on, [\d.]+ ms CPU", lines[6])
    second = re.escape(f"  token 8: {second_bytes} bytes, {second_bytes - first_bytes:+d} bytes, stop, ")
    assert re.fullmatch(second + r"[\d.]+ ms CPU", lines[7])
    assert len(lines) == 8


def test_guardian_source_token_ids_compresses_the_ids(client_server: Any) -> None:
    """The library's guardian_source="token_ids" compresses prompt and output ids as little-endian
    uint32 (lil_sparse.guardian.sequence); the CLI flag sends the same option."""
    prompt_ids = [5, 17, 42, 9, 77, 3]
    # Checks after tokens 8, 16 and 24; the run ends 6 tokens after the last one, past the
    # server's lag bound (4 tokens), so every check has finished before the request ends.
    shadow = {**GUARDIAN, "guardian_interval_tokens": 8, "guardian_shadow": True}
    shadow["guardian_source"] = "token_ids"
    with LilClient(client_server.address) as client:
        by_ids = client.complete(
            token_ids=prompt_ids, max_new_tokens=30, ignore_eos=True, return_token_ids=True, **shadow
        )
    expected = tuple(
        zlib_compressed_size(sequence_bytes("", "", prompt_ids, by_ids.token_ids[:step], "token_ids"))
        for step in (8, 16, 24)
    )
    assert by_ids.guardian.compressed_bytes == expected

    with LilClient(client_server.address) as client:
        library = client.complete("hello", max_new_tokens=30, ignore_eos=True, **shadow)
    flags = ["--json", "--max-new-tokens", "30", "--ignore-eos", "--guardian-shadow", "--guardian"]
    flags += ["--guardian-interval", "8", "--guardian-threshold", "1000000"]
    runs = {}
    for source in ("token_ids", "text"):
        code, output = _cli(client_server.address, *flags, "--guardian-source", source)
        assert code == 0
        runs[source] = json.loads(output)["guardian"]["compressed_bytes"]
    assert tuple(runs["token_ids"]) == library.guardian.compressed_bytes
    assert len(runs["text"]) == 3 and runs["text"] != runs["token_ids"]


def test_forced_answer_prompt_logprobs_are_null_in_json_and_nan_in_text(client_server: Any) -> None:
    """The server sends NaN for the forced answer prompt's tokens; --json writes null (strict JSON)."""
    flags = ["--max-new-tokens", "64", "--ignore-eos", *GUARDIAN_FLAGS, "--guardian-action", "answer"]
    flags += ["--guardian-answer-max-tokens", "3", "--logprobs"]
    code, output = _cli(client_server.address, "--json", *flags)
    assert code == 0
    data = json.loads(output)
    g = data["guardian"]
    start, forced = g["answer_started_at"], g["answer_prompt_tokens"]
    assert data["finish_reason"] == "early_stop" and start == 8 and forced > 0
    logprobs = data["logprobs"]
    assert len(logprobs) == data["completion_tokens"] == start + forced + 3
    assert [i for i, x in enumerate(logprobs) if x is None] == list(range(start, start + forced))
    code, output = _cli(client_server.address, *flags)
    assert code == 0
    printed = output.split("\n---\n")[1].splitlines()[5].removeprefix("logprobs: ").split(" ")
    assert [i for i, x in enumerate(printed) if x == "nan"] == list(range(start, start + forced))
