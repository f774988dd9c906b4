"""The engine's commands: ``generate``, ``convert``, ``models``.

``lil-sparse serve`` lives with the server (``server/entrypoint.py`` adds it to these), because
the engine never imports server code.
"""

from __future__ import annotations

import argparse
import os
import sys
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
    """Run one command. Mistakes a user can fix print one line and exit non-zero, no traceback:
    ``ValueError`` (a bad name, path or setting; the message names it) and ``FetchError`` exit 2,
    ``OSError`` (files, ports) 1, Ctrl-C 130. ``LIL_SPARSE_TRACEBACK=1`` re-raises instead."""
    from lil_sparse.loading.fetcher import FetchError

    args = build_parser(extra).parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"lil-sparse {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FetchError, OSError) as error:
        if os.environ.get("LIL_SPARSE_TRACEBACK") == "1":
            raise
        message = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        print(f"lil-sparse {args.command}: {message}", file=sys.stderr)
        return 1 if isinstance(error, OSError) else 2


if __name__ == "__main__":
    raise SystemExit(main())
