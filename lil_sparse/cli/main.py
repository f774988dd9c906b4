"""The engine's commands: ``generate``, ``convert``, ``models``.

``lil-sparse serve`` lives with the server (``server/entrypoint.py`` adds it to these), because
the engine never imports server code.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from lil_sparse.cli.convert import add_convert_parser
from lil_sparse.cli.generate import add_generate_parser
from lil_sparse.cli.models import add_models_parser


def build_parser(extra: list[Callable[[Any], Any]] = ()) -> argparse.ArgumentParser:  # type: ignore[assignment]
    parser = argparse.ArgumentParser(
        prog="lil-sparse", description="Sparse-attention LLM sidecar with Guardian"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (add_generate_parser, add_convert_parser, add_models_parser, *extra):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None, extra: list[Callable[[Any], Any]] = ()) -> int:  # type: ignore[assignment]
    args = build_parser(extra).parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
