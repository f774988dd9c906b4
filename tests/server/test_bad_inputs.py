"""Every row of the bad-input table against a real in-process server: exact code, field named.

The same table is the body of docs/reliability.md; the last test fails when the committed doc
differs from what ``python tests/server/reliability_doc.py`` writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bad_inputs import BAD_INPUTS, TABLE_SERVER_SETTINGS, BadInput
from lil_client import LilClient
from reliability_doc import DOC_PATH, render
from server_harness import start_server, wait_until

SERVICE = "/lil_sparse.v1.LilSparseService/"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tiny_engine: Any) -> Iterator[Any]:
    background = start_server(tiny_model_dir, tiny_engine, **TABLE_SERVER_SETTINGS)
    yield background
    background.stop()


def _send(address: str, row: BadInput) -> grpc.RpcError:
    body = row.body if isinstance(row.body, bytes) else row.body.SerializeToString()
    with grpc.insecure_channel(address) as channel:
        # Raw bytes both ways: the server must parse (or refuse) whatever arrives.
        if row.method == "Generate":
            call = channel.unary_stream(SERVICE + row.method)
            try:
                list(call(body, timeout=60))
            except grpc.RpcError as error:
                return error
        else:
            try:
                channel.unary_unary(SERVICE + row.method)(body, timeout=60)
            except grpc.RpcError as error:
                return error
    raise AssertionError(f"{row.name}: the server accepted it")


@pytest.mark.parametrize("row", BAD_INPUTS, ids=[row.name for row in BAD_INPUTS])
def test_bad_input_gets_its_code_and_names_its_field(server: Any, row: BadInput) -> None:
    error = _send(server.address, row)
    assert (error.code(), error.details().split(": ", 1)[0]) == (row.code, row.field), error.details()


def test_the_table_has_at_least_100_rows_and_leaves_the_server_idle(server: Any, tiny_engine: Any) -> None:
    assert len(BAD_INPUTS) >= 100
    assert wait_until(lambda: server.server.engine_loop.in_flight == 0)
    assert tiny_engine.stats().kv_pages_used == 0
    with LilClient(server.address) as client:
        assert client.complete("hello", max_new_tokens=3, ignore_eos=True).completion_tokens == 3


def test_empty_request_id_is_treated_as_absent(server: Any) -> None:
    with LilClient(server.address) as client:
        stream = client.generate("hello", max_new_tokens=2, ignore_eos=True, request_id="")
        chunks = list(stream)
    assert len(stream.summary.started.request_id) == 32  # a server-made uuid4 hex
    assert sum(chunk.token_count for chunk in chunks) == 2


def test_committed_reliability_doc_is_generated_from_the_table() -> None:
    assert DOC_PATH.read_text(encoding="utf-8") == render(), (
        "docs/reliability.md is stale: run python tests/server/reliability_doc.py"
    )
