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
    code, output = _cli(["--address", client_server.address, "generate", "hello", *flags])
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
    assert re.fullmatch(r"kv: peak \d+ pages, [\d.]+ pages attended per step", lines[4])


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


def test_cli_info_and_errors(client_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = _cli(["--address", client_server.address, "info"])
    assert code == 0
    assert "policies: full, sink, h2o, quest, infllm" in output
    assert re.search(r"^model: .*model \(qwen2\)$", output, re.MULTILINE)
    code, _ = _cli(["--address", client_server.address, "generate", "hi", "--top-p", "5"])
    assert code == 1
    assert "INVALID_ARGUMENT: top_p: must be in (0, 1], got 5.0" in capsys.readouterr().err
