"""The busy-port probe: a live listener is busy, a port held only by TIME_WAIT is free."""

from __future__ import annotations

import errno
import socket

import pytest

from server.ports import check_port_free


def _time_wait_port() -> int:
    """A loopback port whose only socket is in TIME_WAIT: the server side closed a connection first."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the active closer (the server side, as after a metrics scrape) enters TIME_WAIT
    assert client.recv(1) == b""  # the FIN arrived
    client.close()
    listener.close()
    return port


def test_time_wait_port_is_free() -> None:
    port = _time_wait_port()
    # The state is real: a bind without SO_REUSEADDR (the old probe) is refused.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as plain, pytest.raises(OSError) as refused:
        plain.bind(("127.0.0.1", port))
    assert refused.value.errno == errno.EADDRINUSE
    check_port_free("127.0.0.1", port, "metrics_port")  # no error


def test_live_listener_is_busy() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(ValueError) as busy:
            check_port_free("127.0.0.1", port, "metrics_port")
    assert str(busy.value) == (
        f"metrics_port: 127.0.0.1:{port} is already in use (another server?); "
        "choose another with --metrics-port"
    )
