"""The ``lil-sparse`` console script: the engine's commands plus ``serve``."""

from __future__ import annotations

from lil_sparse.cli.main import main as engine_main
from server.cli import add_serve_parser


def main(argv: list[str] | None = None) -> int:
    return engine_main(argv, extra=[add_serve_parser])


if __name__ == "__main__":
    raise SystemExit(main())
