"""``lil-client``: stream a completion or show server info from the command line.

lil-client --address localhost:50051 generate "prompt" --policy quest --budget 128 --guardian
lil-client --address localhost:50051 generate "prompt" --json
lil-client --address localhost:50051 info
lil-client --address pod:50051 --ca-file ca.pem --token-file token info   # TLS and a bearer token
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, TextIO

from google.protobuf import json_format

from lil_client.client import LilClient
from lil_client.connection import Connection
from lil_client.request import GUARDIAN_ACTIONS, GUARDIAN_MODES, POLICIES, GenerateOptions
from lil_client.types import LilClientError, Summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lil-client", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost:50051", help="server host:port")
    parser.add_argument("--timeout", type=float, default=None, help="call deadline in seconds")
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's root CAs")
    parser.add_argument("--ca-file", help="PEM CA bundle to verify the server (turns on TLS)")
    parser.add_argument("--cert-file", help="PEM client certificate for mTLS (with --key-file)")
    parser.add_argument("--key-file", help="PEM private key of --cert-file")
    parser.add_argument("--token-file", help="file holding the bearer token to send")
    parser.add_argument("--server-name", help="name to check the server certificate against")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="stream a completion")
    generate.add_argument("prompt", help="prompt text")
    generate.add_argument("--chat", action="store_true", help="send the prompt as one user chat message")
    generate.add_argument("--json", action="store_true", help="print one JSON object instead of live text")
    generate.add_argument("--max-new-tokens", type=int)
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--top-k", type=int)
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    generate.add_argument("--ignore-eos", action="store_true", default=None)
    generate.add_argument("--policy", choices=POLICIES)
    generate.add_argument("--budget", type=int, dest="budget_tokens", help="KV tokens attended per step")
    generate.add_argument("--sink-tokens", type=int)
    generate.add_argument("--recent-tokens", type=int)
    generate.add_argument("--dense-layers", type=int)
    generate.add_argument("--guardian", action=argparse.BooleanOptionalAction, default=None)
    generate.add_argument("--guardian-interval", type=int, dest="guardian_interval_tokens")
    generate.add_argument("--guardian-threshold", type=int, dest="guardian_threshold_bytes")
    generate.add_argument("--guardian-mode", choices=GUARDIAN_MODES)
    generate.add_argument(
        "--guardian-shadow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="record where Guardian would stop, without stopping",
    )
    generate.add_argument("--guardian-action", choices=GUARDIAN_ACTIONS, help="what a Guardian stop does")
    generate.add_argument(
        "--guardian-answer-max-tokens", type=int, help="with --guardian-action answer: tokens of the answer"
    )
    generate.add_argument(
        "--allow-special-tokens",
        action="store_true",
        default=None,
        help="parse control tokens such as <|im_start|> written in the prompt",
    )
    info = commands.add_parser("info", help="show the served model, policies and defaults")
    info.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _options(args: argparse.Namespace) -> GenerateOptions:
    names = {f.name for f in dataclasses.fields(GenerateOptions)}
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names and v is not None}
    values["stop"] = tuple(args.stop)
    return GenerateOptions(**values)


def format_summary(summary: Summary) -> str:
    """The human summary printed after the streamed text."""
    t, g, kv = summary.timings, summary.guardian, summary.kv
    if g.enabled and g.shadow:
        stop = f", would stop at token {g.stop_step}" if g.stop_step is not None else ", would not stop"
        guardian = f"shadow, {g.checks} checks{stop}, {g.cpu_seconds * 1e3:.2f} ms CPU"
    elif g.enabled:
        stop = (
            f", stop at token {g.stop_step} (applied {g.applied_at_step})" if g.stop_step is not None else ""
        )
        if g.answer_started_at is not None:
            stop += f", answer: {g.answer_prompt_tokens} prompt + {g.answer_tokens} tokens"
        guardian = f"on, {g.checks} checks{stop}, {g.cpu_seconds * 1e3:.2f} ms CPU"
    else:
        guardian = "off"
    return "\n".join(
        (
            f"finish: {summary.finish_reason}",
            f"tokens: prompt {summary.prompt_tokens}, completion {summary.completion_tokens}",
            f"ttft: {t.ttft_seconds * 1e3:.1f} ms  tbt: mean {t.tbt_mean_seconds * 1e3:.2f} ms, "
            f"p50 {t.tbt_p50_seconds * 1e3:.2f} ms, p95 {t.tbt_p95_seconds * 1e3:.2f} ms  "
            f"jct: {t.jct_seconds * 1e3:.1f} ms",
            f"guardian: {guardian}",
            f"kv: peak {kv.peak_pages} pages, {kv.mean_attended_pages:.1f} pages attended per step",
        )
    )


def summary_dict(summary: Summary) -> dict[str, Any]:
    data = dataclasses.asdict(summary)
    data.pop("started")
    data["text"] = summary.text
    return data


def _generate(client: LilClient, args: argparse.Namespace, out: TextIO) -> None:
    prompt = None if args.chat else args.prompt
    messages = [{"role": "user", "content": args.prompt}] if args.chat else None
    stream = client.generate(
        prompt, messages=messages, timeout=args.timeout, **dataclasses.asdict(_options(args))
    )
    for chunk in stream:
        if not args.json:
            out.write(chunk.text)
            out.flush()
    if args.json:
        out.write(json.dumps(summary_dict(stream.summary)) + "\n")
    else:
        out.write("\n---\n" + format_summary(stream.summary) + "\n")


def _info(client: LilClient, args: argparse.Namespace, out: TextIO) -> None:
    info = client.info(timeout=args.timeout)
    if args.json:
        out.write(json.dumps(json_format.MessageToDict(info, preserving_proto_field_name=True)) + "\n")
        return
    out.write(
        f"model: {info.model} ({info.architecture})\n"
        f"context: {info.max_context} tokens, page size {info.page_size}, {info.num_layers} layers\n"
        f"backend: {info.backend}, {info.num_pages_total} KV pages\n"
        f"policies: {', '.join(p.name for p in info.policies)}\n"
        f"limits: {info.limits.max_running} running, {info.limits.max_waiting} waiting\n"
        f"server: {info.server_version}\n"
    )


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    stream_out = out or sys.stdout
    try:
        connection = Connection(
            tls=args.tls,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            token_file=args.token_file,
            server_name=args.server_name,
        )
        with LilClient(args.address, connection=connection) as client:
            if args.command == "generate":
                _generate(client, args, stream_out)
            else:
                _info(client, args, stream_out)
    except LilClientError as error:
        print(f"lil-client: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # a bad option caught before sending
        print(f"lil-client: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: closing the channel cancels the call; the server aborts it
        print("\nlil-client: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
