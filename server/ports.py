"""Find a busy port before the model loads (seconds to minutes), not after.

gRPC binds with ``SO_REUSEPORT`` by default, so a second server on a busy port would start and
silently share the traffic; the sidecar turns that off (``grpc.so_reuseport`` 0) and checks
here first, with a bind that fails with ``EADDRINUSE`` like gRPC's.

The probe sets ``SO_REUSEADDR`` as gRPC and the metrics server (``http.server``) do: on Linux a
port held only by ``TIME_WAIT`` connections (a server just stopped after a metrics scrape) then
binds, while a live listener still refuses it. Without it a restart was refused for ~60 s.
"""

from __future__ import annotations

import errno
import socket

# gRPC server option: bind without SO_REUSEPORT, so a busy port is an error.
GRPC_EXCLUSIVE_PORT_OPTIONS = (("grpc.so_reuseport", 0),)


def check_port_free(host: str, port: int, setting: str) -> None:
    """Raise ValueError naming ``setting`` if ``host:port`` is taken; port 0 (any) always passes."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            raise ValueError(
                f"{setting}: {host}:{port} is already in use (another server?); "
                f"choose another with --{setting.replace('_', '-')}"
            ) from None
