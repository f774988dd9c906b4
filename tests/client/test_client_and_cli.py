"""The sync/async clients and the lil-client CLI against a real server."""

from __future__ import annotations

import asyncio
import io
import json
import re
from typing import Any

import grpc
import pytest
from lil_client import AsyncLilClient, LilClient, LilClientError
from lil_client.cli import main


def test_sync_stream_yields_typed_chunks_and_summary(client_server: Any) -> None:
    with LilClient(client_server.address) as client:
        stream = client.generate("hello", max_new_tokens=7, ignore_eos=True, return_token_ids=True)
        chunks = list(stream)
    summary = stream.summary
    assert sum(c.token_count for c in chunks) == summary.completion_tokens == 7
    assert summary.text == "".join(c.text for c in chunks)
    assert len(summary.token_ids) == 7
    assert summary.finish_reason == "length"
    assert stream.request_id == summary.request_id and summary.request_id


def test_async_client_matches_sync(client_server: Any) -> None:
    async def run() -> Any:
        async with AsyncLilClient(client_server.address) as client:
            return await client.complete(
                "hello", max_new_tokens=7, ignore_eos=True, return_token_ids=True, request_id="async-1"
            )

    summary = asyncio.run(run())
    with LilClient(client_server.address) as client:
        sync = client.complete("hello", max_new_tokens=7, ignore_eos=True, return_token_ids=True)
    assert summary.request_id == "async-1"
    assert summary.token_ids == sync.token_ids and summary.text == sync.text


def test_server_errors_become_client_errors(client_server: Any) -> None:
    with LilClient(client_server.address) as client, pytest.raises(LilClientError) as raised:
        client.complete("hello", top_p=0.0)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == "top_p: must be in (0, 1], got 0.0"


def test_summary_names_why_a_stream_has_none(client_server: Any) -> None:
    """A cancelled, failed or unread stream's summary says so, never INTERNAL (a server fault)."""
    with LilClient(client_server.address) as client:
        unread = client.generate("hello", max_new_tokens=40, ignore_eos=True)
        with pytest.raises(LilClientError) as raised:
            unread.summary  # noqa: B018 (reading the property is the test)
        assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
        unread.cancel()

        cancelled = client.generate("hello", max_new_tokens=40, ignore_eos=True)
        for read, _ in enumerate(cancelled, start=1):
            if read == 2:
                cancelled.cancel()
                break
        with pytest.raises(LilClientError) as raised:
            cancelled.summary  # noqa: B018
        assert (raised.value.code, raised.value.message) == (
            grpc.StatusCode.CANCELLED,
            "the stream was cancelled before it finished",
        )

        rejected = client.generate("hello", top_p=0.0)
        with pytest.raises(LilClientError):
            list(rejected)
        with pytest.raises(LilClientError) as raised:
            rejected.summary  # noqa: B018
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.message == "top_p: must be in (0, 1], got 0.0"


def test_async_summary_after_cancel_is_cancelled(client_server: Any) -> None:
    async def run() -> LilClientError:
        async with AsyncLilClient(client_server.address) as client:
            stream = client.generate("hello", max_new_tokens=40, ignore_eos=True)
            async for _ in stream:
                stream.cancel()
                break
            try:
                stream.summary  # noqa: B018
            except LilClientError as error:
                return error
            raise AssertionError("a cancelled stream has no summary")

    error = asyncio.run(run())
    assert error.code == grpc.StatusCode.CANCELLED
    assert error.message == "the stream was cancelled before it finished"


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    return main(argv, out=out), out.getvalue()


def test_cli_generate_prints_text_then_summary(client_server: Any) -> None:
    with LilClient(client_server.address) as client:
        expected = client.complete(
            "hello", max_new_tokens=6, ignore_eos=True, policy="quest", budget_tokens=16
        )
    flags = ["--max-new-tokens", "6", "--ignore-eos", "--policy", "quest", "--budget", "16"]
    flags += ["--guardian", "--guardian-interval", "100"]
    code, output = _cli(["--address", client_server.address, "generate", "hello", "--raw", *flags])
    assert code == 0
    text, summary = output.split("\n---\n")
    assert text == expected.text  # greedy: the same tokens as the library call
    lines = summary.strip().splitlines()
    assert lines[0] == "finish: length"
    assert lines[1] == f"tokens: prompt {expected.prompt_tokens}, completion 6"
    assert re.fullmatch(
        r"ttft: [\d.]+ ms  tbt: mean [\d.]+ ms, p50 [\d.]+ ms, p95 [\d.]+ ms  jct: [\d.]+ ms", lines[2]
    )
    assert re.fullmatch(r"guardian: on, 0 checks, [\d.]+ ms CPU", lines[3])
    assert re.fullmatch(
        r"kv: peak \d+ pages \(all KV heads\), [\d.]+ pages attended per step and KV head", lines[4]
    )


def test_cli_json(client_server: Any) -> None:
    code, output = _cli(
        ["--address", client_server.address, "generate", "hi", "--max-new-tokens", "3", "--json"]
    )
    assert code == 0
    data = json.loads(output)
    assert data["completion_tokens"] <= 3
    assert data["finish_reason"] in ("length", "eos")
    assert set(data["timings"]) >= {"ttft_seconds", "tbt_p95_seconds", "jct_seconds"}
    assert data["guardian"]["enabled"] is False


def test_cli_applies_the_chat_template_unless_raw(client_server: Any) -> None:
    """As ``lil-sparse generate``: the prompt is one user chat message; --raw sends it as is."""
    with LilClient(client_server.address) as client:
        chat = client.complete(messages=[{"role": "user", "content": "hello"}], max_new_tokens=4)
        raw = client.complete("hello", max_new_tokens=4)
    assert chat.prompt_tokens > raw.prompt_tokens  # the template adds the role markers
    runs = {}
    for flags in ([], ["--chat"], ["--raw"]):  # --chat: the default, still accepted
        code, output = _cli(
            [
                "--address",
                client_server.address,
                "generate",
                "hello",
                "--json",
                "--max-new-tokens",
                "4",
                *flags,
            ]
        )
        assert code == 0
        data = json.loads(output)
        runs[tuple(flags)] = (data["prompt_tokens"], data["text"])
    assert runs[()] == runs[("--chat",)] == (chat.prompt_tokens, chat.text)
    assert runs[("--raw",)] == (raw.prompt_tokens, raw.text)


def test_cli_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "server host:port (default: localhost:50051)" in capsys.readouterr().out


def test_cli_info_and_errors(client_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = _cli(["--address", client_server.address, "info"])
    assert code == 0
    assert "policies: full, sink, h2o, quest, infllm" in output
    assert "selection: exact; overlap scheduling: off; warm-up: off\n" in output
    # The server's defaults (ServerConfig with no default_* settings), as the help promises.
    assert (
        "defaults: policy full, budget 512 tokens (full ignores it), sink 4, recent 0 (0: auto), "
        "dense layers 2\n"
        "  max_new_tokens 256, temperature 0, top_k 0, top_p 1, ignore_eos false\n"
        "  guardian off: interval 250 tokens, threshold 20 bytes, mode full, action truncate\n"
    ) in output
    assert re.search(r"^model: .*model \(qwen2\)$", output, re.MULTILINE)
    code, _ = _cli(["--address", client_server.address, "generate", "hi", "--top-p", "5"])
    assert code == 1
    assert "INVALID_ARGUMENT: top_p: must be in (0, 1], got 5.0" in capsys.readouterr().err
