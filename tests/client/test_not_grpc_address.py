"""A client pointed at an HTTP port (the server's Prometheus port, say) gets an error that says
so, not only grpc's "Failed parsing HTTP/2"; other failures keep grpc's words alone."""

from __future__ import annotations

import http.server
import io
import socket
import threading
from collections.abc import Iterator
from contextlib import redirect_stderr

import grpc
import pytest
from lil_client import LilClient, LilClientError
from lil_client.cli import main
from lil_client.stream import NOT_GRPC_HINT


class Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture
def http_address() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_http_port_is_named_in_the_error(http_address):
    with LilClient(http_address) as client, pytest.raises(LilClientError) as caught:
        client.info(timeout=10)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "HTTP/2" in caught.value.message
    assert caught.value.message.endswith(NOT_GRPC_HINT)


def test_the_cli_prints_the_hint(http_address):
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        code = main(["--address", http_address, "--timeout", "10", "info"])
    assert code != 0
    assert "Prometheus port, 9400 by default" in stderr.getvalue()
    # One explanation: the address answered, so "no server answered" would contradict it.
    assert "no server answered" not in stderr.getvalue()
    assert len(stderr.getvalue().strip().splitlines()) == 1


def test_a_closed_port_keeps_grpcs_words():
    with socket.socket() as probe:  # a port nobody listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with LilClient(f"127.0.0.1:{port}") as client, pytest.raises(LilClientError) as caught:
        client.info(timeout=10)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert NOT_GRPC_HINT not in caught.value.message
