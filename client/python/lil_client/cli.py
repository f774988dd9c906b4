"""``lil-client``: stream a completion or show server info from the command line.

lil-client --address localhost:50051 generate "prompt" --policy quest --budget 128 --guardian
lil-client --address localhost:50051 generate "prompt" --json
lil-client --address localhost:50051 generate "prompt" --token-ids --logprobs --request-id r1
lil-client --address localhost:50051 generate "raw text to continue" --raw   # no chat template
lil-client --address localhost:50051 info
lil-client --address pod:50051 --ca-file ca.pem --token-file token info   # TLS and a bearer token

The parser and the commands are here; what they print is in :mod:`lil_client.cli_output`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, NoReturn, TextIO

from google.protobuf import json_format

from lil_client.cli_hints import GUARDIAN_FLAGS, budget_note, error_hint, guardian_note
from lil_client.cli_output import (
    format_defaults,
    format_info,
    format_outputs,
    format_summary,
    summary_dict,
)
from lil_client.client import LilClient
from lil_client.connection import Connection
from lil_client.request import (
    GUARDIAN_ACTIONS,
    GUARDIAN_MODES,
    GUARDIAN_SOURCES,
    POLICIES,
    GenerateOptions,
)
from lil_client.types import LilClientError

__all__ = ["format_defaults", "format_info", "format_outputs", "format_summary", "main", "summary_dict"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default; request options default to unset, which their group explains."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, []):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """A usage mistake prints one line and where the flags are listed, not the whole usage (a
    ``generate`` usage runs to twenty lines, which hid the error under them)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n({self.prog} --help lists every flag)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lil-client",
        description=__doc__.splitlines()[0].replace("``", ""),  # the docstring's first line, plain
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--address", default="localhost:50051", help="server host:port")
    parser.add_argument(
        "--timeout", type=float, default=None, help="call deadline in seconds (default: none)"
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's root CAs")
    parser.add_argument("--ca-file", help="PEM CA bundle to verify the server (turns on TLS)")
    parser.add_argument("--cert-file", help="PEM client certificate for mTLS (with --key-file)")
    parser.add_argument("--key-file", help="PEM private key of --cert-file")
    parser.add_argument("--token-file", help="file holding the bearer token to send")
    parser.add_argument("--server-name", help="name to check the server certificate against")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="stream a completion", formatter_class=_HelpFormatter)
    generate.add_argument(
        "prompt", help="the user message (the model's chat template is applied unless --raw)"
    )
    prompt_kind = generate.add_mutually_exclusive_group()
    prompt_kind.add_argument(
        "--raw", action="store_true", help="send the prompt text as is, without the chat template"
    )
    prompt_kind.add_argument(
        "--chat", action="store_true", help="the default (one user chat message); kept for old scripts"
    )
    generate.add_argument("--json", action="store_true", help="print one JSON object instead of live text")
    options = generate.add_argument_group(
        "request options", "an option left out takes the server's default (`lil-client info` prints them)"
    )
    options.add_argument("--max-new-tokens", type=int, help="maximum generated tokens")
    options.add_argument("--temperature", type=float, help="sampling temperature, 0 greedy")
    options.add_argument("--top-k", type=int, help="top-k filter, 0 off")
    options.add_argument("--top-p", type=float, help="nucleus mass in (0, 1], 1 off")
    options.add_argument("--seed", type=int, help="sampling seed")
    options.add_argument(
        "--stop", action="append", default=[], help="stop string (repeatable; default: none)"
    )
    options.add_argument(
        "--ignore-eos", action="store_true", default=None, help="keep generating past end-of-sequence"
    )
    options.add_argument("--policy", type=str.lower, choices=POLICIES, help="sparse policy (any case)")
    options.add_argument(
        "--budget",
        type=int,
        dest="budget_tokens",
        help="KV tokens attended per step (policy full ignores it)",
    )
    options.add_argument("--sink-tokens", type=int, help="attention-sink tokens (sink, infllm)")
    options.add_argument("--recent-tokens", type=int, help="recent tokens (h2o, infllm; 0 auto)")
    options.add_argument("--dense-layers", type=int, help="leading dense layers (quest)")
    options.add_argument(
        "--guardian",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Guardian early stop on or off",
    )
    options.add_argument(
        "--guardian-interval",
        type=int,
        dest="guardian_interval_tokens",
        help="Guardian: tokens between checks",
    )
    options.add_argument(
        "--guardian-threshold",
        type=int,
        dest="guardian_threshold_bytes",
        help="Guardian: minimum compressed growth in bytes",
    )
    options.add_argument("--guardian-mode", choices=GUARDIAN_MODES, help="Guardian compression")
    options.add_argument(
        "--guardian-source",
        choices=GUARDIAN_SOURCES,
        help="Guardian: compress the text or the token ids (4 bytes each)",
    )
    options.add_argument(
        "--guardian-shadow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="record where Guardian would stop, without stopping",
    )
    options.add_argument("--guardian-action", choices=GUARDIAN_ACTIONS, help="what a Guardian stop does")
    options.add_argument(
        "--guardian-answer-max-tokens",
        type=int,
        help="with --guardian-action answer: tokens of the answer",
    )
    options.add_argument(
        "--allow-special-tokens",
        action="store_true",
        default=None,
        help="parse control tokens such as <|im_start|> written in the prompt",
    )
    options.add_argument("--request-id", help="request id (default: the server picks one)")
    output = generate.add_argument_group(
        "output",
        "what the server returns besides the text (default: none): lines after the summary,"
        " or fields of --json",
    )
    output.add_argument(
        "--token-ids", action="store_true", dest="return_token_ids", help="return the generated token ids"
    )
    output.add_argument(
        "--logprobs",
        action="store_true",
        dest="return_logprobs",
        help="return each token's log-probability (nan/null for a forced Guardian answer prompt)",
    )
    output.add_argument(
        "--guardian-trace",
        action="store_true",
        dest="return_guardian_trace",
        help="return one record per Guardian check",
    )
    info = commands.add_parser(
        "info", help="show the served model, policies and defaults", formatter_class=_HelpFormatter
    )
    info.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _options(args: argparse.Namespace) -> GenerateOptions:
    names = {f.name for f in dataclasses.fields(GenerateOptions)}
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names and v is not None}
    values["stop"] = tuple(args.stop)
    return GenerateOptions(**values)


def _generate(client: LilClient, args: argparse.Namespace, out: TextIO) -> None:
    # The chat template by default, as ``lil-sparse generate``; --raw sends the text as is.
    prompt = args.prompt if args.raw else None
    messages = None if args.raw else [{"role": "user", "content": args.prompt}]
    stream = client.generate(
        prompt, messages=messages, timeout=args.timeout, **dataclasses.asdict(_options(args))
    )
    printed = False
    try:
        for chunk in stream:
            if not args.json:
                out.write(chunk.text)
                out.flush()
                printed = printed or bool(chunk.text)
    except LilClientError:
        if printed:  # the error goes to stderr on a line of its own, not after the partial text
            out.write("\n")
            out.flush()
        raise
    if args.json:
        data = summary_dict(stream.summary, with_logprobs=args.return_logprobs)
        out.write(json.dumps(data) + "\n")
    else:
        out.write("\n---\n" + format_summary(stream.summary) + "\n" + format_outputs(stream.summary, args))
    given_guardian = [flag for dest, flag in GUARDIAN_FLAGS.items() if getattr(args, dest) is not None]
    notes = (
        budget_note(args.budget_tokens, args.policy, stream.summary),
        guardian_note(given_guardian, args.guardian, stream.summary),
    )
    for note in filter(None, notes):
        print(f"lil-client: {note}", file=sys.stderr)


def _info(client: LilClient, args: argparse.Namespace, out: TextIO) -> None:
    info = client.info(timeout=args.timeout)
    if args.json:
        out.write(json.dumps(json_format.MessageToDict(info, preserving_proto_field_name=True)) + "\n")
        return
    out.write(format_info(info))


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
        print(f"lil-client: {error}{error_hint(error, args.address, args.timeout)}", file=sys.stderr)
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
