"""``lil-sparse convert GGUF OUTDIR``: GGUF (or a known model name) -> bf16 Hugging Face folder."""

from __future__ import annotations

import argparse
import time
from typing import Any

_DTYPES = ("bfloat16", "float16", "float32")


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``convert`` subcommand on an ``argparse`` subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "convert",
        help="convert a GGUF file to a safetensors model folder that loads in seconds",
        description="Dequantise a llama/qwen2 GGUF (or a known model name, fetched if missing) and write "
        "model.safetensors, config.json and tokenizer files to OUTDIR.",
    )
    parser.add_argument("gguf", help="path to a .gguf file, or a known model name (see `models list`)")
    parser.add_argument("outdir", help="folder to write (created if missing)")
    parser.add_argument(
        "--dtype", default="bfloat16", choices=_DTYPES, help="weight dtype (default bfloat16)"
    )
    parser.set_defaults(func=run_convert)
    return parser


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from lil_sparse.loading.convert import convert_gguf

    started = time.monotonic()
    out = convert_gguf(args.gguf, args.outdir, dtype=getattr(torch, args.dtype))
    print(f"wrote {out} in {time.monotonic() - started:.1f}s")
    return 0


# The names cli/main.py dispatches on.
add_parser = add_convert_parser
run = run_convert
