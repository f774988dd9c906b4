"""``lil-sparse serve``: flags and env vars -> ServerConfig -> a running sidecar until SIGTERM.

    python -m server --model PATH --port 50051 --metrics-port 9400

On SIGTERM or SIGINT the server drains (readiness NOT_SERVING, new calls UNAVAILABLE, in-flight
streams finish within ``--grace-period-seconds``) and the process exits 0; one that arrives
before it serves (while the model loads or the engine warms up) ends the process at once, also
with 0. If the engine thread dies, both health services turn NOT_SERVING and the process exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from server.config import ServerConfig
from server.settings import all_settings, build_server_config, parse_bool

logger = logging.getLogger("server")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; every flag defaults to None so the env var or default applies."""
    for setting in all_settings():
        help_text = f"{setting.help} [env {setting.env_var}]"
        if setting.parse is parse_bool:
            parser.add_argument(
                setting.flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                setting.flag, type=setting.parse, default=None, choices=setting.choices, help=help_text
            )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on an argparse subparsers object; ``args.func(args)`` runs it."""
    parser = subparsers.add_parser("serve", help="run the gRPC sidecar", description=__doc__)
    add_serve_arguments(parser)
    parser.set_defaults(func=run_serve)
    return parser


async def serve(config: ServerConfig, engine: Any | None = None) -> int:
    """Run until SIGTERM/SIGINT, then drain; returns the exit code (1 if the engine died)."""
    from server.app import SidecarServer  # grpc and the engine load only when serving

    server = SidecarServer(config, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    signalled = asyncio.ensure_future(stop.wait())
    # A signal while the model loads or the engine warms up (minutes on a fresh GPU machine) ends
    # the start: nothing is serving yet, so there is nothing to drain.
    starting = asyncio.ensure_future(server.start())
    await asyncio.wait((starting, signalled), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        logger.info("signal received while starting (loading the model or warming up); exiting")
        return 0
    if starting.exception() is not None:
        signalled.cancel()
    starting.result()  # a start that failed raises here
    # One parseable line: supervisors and tests wait for it to know the ports.
    print(
        f"lil-sparse serving port={server.port} metrics_port={server.metrics_port}",
        file=sys.stderr,
        flush=True,
    )
    died = asyncio.ensure_future(server.engine_died.wait())
    await asyncio.wait((signalled, died), return_when=asyncio.FIRST_COMPLETED)
    if died.done():  # health already says NOT_SERVING; exit so the supervisor restarts us
        signalled.cancel()
        logger.critical("the engine thread died; exiting with status 1")
        await server.drain(grace_seconds=0.0)
        return 1
    died.cancel()
    logger.info("signal received; draining for up to %.1f s", config.grace_period_seconds)
    await server.drain()
    logger.info("drained; exiting")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    flags = {setting.name: getattr(args, setting.name, None) for setting in all_settings()}
    try:
        config = build_server_config(flags)
    except ValueError as error:
        print(f"lil-sparse serve: {error}", file=sys.stderr)
        return 2
    try:
        code = asyncio.run(serve(config))
    except ValueError as error:  # a TLS or token file that cannot be read
        print(f"lil-sparse serve: {error}", file=sys.stderr)
        return 2
    # Drained: every stream got its last message and every port is closed. Unloading torch and
    # the other modules would take the interpreter most of a second more, which only delays the
    # pod's replacement, so the process ends here.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lil-sparse serve", description=__doc__)
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))
