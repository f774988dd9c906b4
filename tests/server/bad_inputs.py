"""The bad-input table: every row is one bad request, the status code it gets, and the field named.

``tests/server/test_bad_inputs.py`` sends each row to a real in-process server and checks the code
and that the message starts with the field; ``tests/server/reliability_doc.py`` writes the table
into ``docs/reliability.md``. The server under test runs with ``TABLE_SERVER_SETTINGS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from lil_client._proto.lil_sparse.v1 import service_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE
# The tiny test model: context 2048, vocabulary 384, 2 layers, page size 16.
TABLE_SERVER_SETTINGS: dict[str, Any] = {"max_prompt_bytes": 65536, "max_new_tokens_limit": 1024}
VOCAB = 384
CONTEXT = 2048


@dataclass(frozen=True)
class BadInput:
    """One row. ``body`` is a request message, or raw bytes sent as the Generate body."""

    name: str  # what the row sends, for the doc
    body: service_pb2.GenerateRequest | bytes
    code: grpc.StatusCode
    field: str  # the message must start with "<field>:"
    method: str = "Generate"


def _request(text: str | None = "hello world", **groups: dict[str, Any]) -> service_pb2.GenerateRequest:
    request = service_pb2.GenerateRequest()
    if text is not None:
        request.text = text
    for group, fields in groups.items():
        for name, value in fields.items():
            target = getattr(request, group)
            if isinstance(value, list):
                getattr(target, name).extend(value)
            else:
                setattr(target, name, value)
    return request


def _with(edit: Callable[[service_pb2.GenerateRequest], Any]) -> service_pb2.GenerateRequest:
    request = service_pb2.GenerateRequest()
    edit(request)
    return request


def _ids(ids: list[int], max_new_tokens: int | None = None) -> service_pb2.GenerateRequest:
    request = service_pb2.GenerateRequest()
    request.token_ids.ids.extend(ids)
    request.token_ids.SetInParent()
    if max_new_tokens is not None:
        request.stopping.max_new_tokens = max_new_tokens
    return request


def _chat(*messages: tuple[str, str]) -> service_pb2.GenerateRequest:
    request = service_pb2.GenerateRequest()
    request.chat.SetInParent()
    for role, content in messages:
        request.chat.messages.add(role=role, content=content)
    return request


def _option_rows() -> list[BadInput]:
    rows = []
    for value in (-1.0, -0.001, -1e30, float("nan"), float("-inf")):
        rows.append(
            BadInput(
                f"temperature {value}", _request(sampling={"temperature": value}), INVALID, "temperature"
            )
        )
    for value in (-1, -3, -(2**31)):
        rows.append(BadInput(f"top_k {value}", _request(sampling={"top_k": value}), INVALID, "top_k"))
    for value in (0.0, -0.1, 1.0000001, 1.5, float("nan"), float("inf"), float("-inf")):
        rows.append(BadInput(f"top_p {value}", _request(sampling={"top_p": value}), INVALID, "top_p"))
    for value in (-1, -(2**63)):
        rows.append(BadInput(f"seed {value}", _request(sampling={"seed": value}), INVALID, "seed"))
    for value in (0, -1, -(2**31), 1025, 2**31 - 1):
        rows.append(
            BadInput(
                f"max_new_tokens {value}",
                _request(stopping={"max_new_tokens": value}),
                INVALID,
                "max_new_tokens",
            )
        )
    rows += [
        BadInput(
            "17 stop strings",
            _request(stopping={"stop_strings": [str(i) for i in range(17)]}),
            INVALID,
            "stop_strings",
        ),
        BadInput(
            "1000 stop strings", _request(stopping={"stop_strings": ["x"] * 1000}), INVALID, "stop_strings"
        ),
        BadInput(
            "a 257-byte stop string",
            _request(stopping={"stop_strings": ["a" * 257]}),
            INVALID,
            "stop_strings[0]",
        ),
        BadInput(
            "a stop string of 100 3-byte characters",
            _request(stopping={"stop_strings": ["ok", "€" * 100]}),
            INVALID,
            "stop_strings[1]",
        ),
        BadInput("an empty stop string", _request(stopping={"stop_strings": [""]}), INVALID, "stop_strings"),
    ]
    for value in (-1, 6, 99, 2**31 - 1):
        rows.append(BadInput(f"policy enum {value}", _request(sparse={"policy": value}), INVALID, "policy"))
    # full ignores the budget and the window fields, but refuses values invalid in themselves.
    for policy, name in ((1, "full"), (2, "sink"), (3, "h2o"), (4, "quest"), (5, "infllm")):
        for budget in (0, -1):
            rows.append(
                BadInput(
                    f"{name} budget_tokens {budget}",
                    _request(sparse={"policy": policy, "budget_tokens": budget}),
                    INVALID,
                    "budget_tokens",
                )
            )
        rows.append(
            BadInput(
                f"{name} budget_tokens 8 (below one page)",
                _request(sparse={"policy": policy, "budget_tokens": 8}),
                INVALID,
                "budget_tokens",
            )
        )
        for group_field in ("sink_tokens", "recent_tokens", "dense_layers"):
            rows.append(
                BadInput(
                    f"{name} {group_field} -1",
                    _request(sparse={"policy": policy, group_field: -1}),
                    INVALID,
                    group_field,
                )
            )
    rows.append(
        BadInput(
            "sink budget_tokens 16 (no room for the 4 default sink tokens and the newest page)",
            _request(sparse={"policy": 2, "budget_tokens": 16}),
            INVALID,
            "budget_tokens",
        )
    )
    for policy, name in ((4, "quest"),):  # only quest reads dense_layers
        for layers in (2, 3, 5, 1000):
            rows.append(
                BadInput(
                    f"{name} dense_layers {layers} (2 layers)",
                    _request(sparse={"policy": policy, "dense_layers": layers}),
                    INVALID,
                    "dense_layers",
                )
            )
    rows += [
        BadInput(
            "guardian interval_tokens 0",
            _request(guardian={"enabled": True, "interval_tokens": 0}),
            INVALID,
            "interval_tokens",
        ),
        BadInput(
            "guardian interval_tokens -5",
            _request(guardian={"enabled": True, "interval_tokens": -5}),
            INVALID,
            "interval_tokens",
        ),
        BadInput(
            "guardian threshold_bytes -1",
            _request(guardian={"threshold_bytes": -1}),
            INVALID,
            "threshold_bytes",
        ),
        BadInput("guardian mode enum 7", _request(guardian={"mode": 7}), INVALID, "mode"),
        BadInput("guardian mode enum -1", _request(guardian={"mode": -1}), INVALID, "mode"),
        BadInput("guardian source enum 9", _request(guardian={"source": 9}), INVALID, "source"),
    ]
    return rows


def _input_rows() -> list[BadInput]:
    long_text = "hello world " * 1200  # over 2048 tokens, under the byte limit
    rows = [
        BadInput("no input", _request(text=None), INVALID, "input"),
        BadInput("text empty", _request(text=""), INVALID, "text"),
        BadInput("text 65,537 bytes", _request(text="a" * 65537), INVALID, "text"),
        BadInput("text 30,000 4-byte characters", _request(text="🙂" * 30000), INVALID, "text"),
        BadInput("text longer than the context", _request(text=long_text), OUT_OF_RANGE, "text"),
        BadInput(
            "text fits, max_new_tokens does not",
            _request(text="hello " * 300, stopping={"max_new_tokens": 1024}),
            OUT_OF_RANGE,
            "max_new_tokens",
        ),
        BadInput("chat with no messages", _chat(), INVALID, "messages"),
        BadInput("chat longer than the context", _chat(("user", long_text)), OUT_OF_RANGE, "messages"),
        BadInput("chat 65,537 bytes", _chat(("user", "a" * 65537)), INVALID, "messages"),
        BadInput("chat bytes summed over messages", _chat(*[("user", "a" * 20000)] * 4), INVALID, "messages"),
        BadInput("token_ids empty", _ids([]), INVALID, "token_ids"),
        BadInput(
            f"token_ids {CONTEXT} ids (fills the context)", _ids([5] * CONTEXT), OUT_OF_RANGE, "token_ids"
        ),
        BadInput("token_ids 100,000 ids", _ids([5] * 100000), OUT_OF_RANGE, "token_ids"),
        BadInput(
            "token_ids fit, max_new_tokens does not",
            _ids([5] * 1500, max_new_tokens=1000),
            OUT_OF_RANGE,
            "max_new_tokens",
        ),
    ]
    for role in ("", "robot", "System", "USER", " user", "tool", "function", "user\n"):
        rows.append(
            BadInput(f"chat role {role!r}", _chat(("user", "hi"), (role, "hi")), INVALID, "messages[1].role")
        )
    rows.append(BadInput("chat role 'robot' first", _chat(("robot", "hi")), INVALID, "messages[0].role"))
    for ids, label in (
        ([-1], "-1"),
        ([1, -2], "-2 second"),
        ([VOCAB], "= vocabulary size"),
        ([1, 2, 1000], "1000"),
        ([2**31 - 1], "2^31-1"),
        ([-(2**31)], "-2^31"),
    ):
        rows.append(BadInput(f"token_ids id {label}", _ids(ids), INVALID, "token_ids"))
    for length in (129, 1000, 10000):
        rows.append(BadInput(f"request_id of {length} characters", _request(), INVALID, "request_id"))
        rows[-1].body.request_id = "r" * length  # type: ignore[union-attr]
    for bad in ("a\x00b", "line\nbreak", "\x07"):
        row = BadInput(f"request_id with control character {bad!r}", _request(), INVALID, "request_id")
        row.body.request_id = bad  # type: ignore[union-attr]
        rows.append(row)
    return rows


def _raw_rows() -> list[BadInput]:
    # Wire bytes: tag = field_number << 3 | wire_type. GenerateRequest: request_id 1, text 2,
    # chat 3 (messages 1: role 1, content 2), stopping 6 (stop_strings 2).
    return [
        BadInput("garbage bytes", b"\xff\xff\xff\xff", INVALID, "request"),
        BadInput("random bytes", bytes(range(200, 256)), INVALID, "request"),
        BadInput("truncated text field", b"\x12\x05ab", INVALID, "request"),
        BadInput("truncated length varint", b"\x12\xff", INVALID, "request"),
        BadInput("invalid UTF-8 in text", b"\x12\x02\xff\xfe", INVALID, "request"),
        BadInput("invalid UTF-8 in request_id", b"\x0a\x01\xff" + b"\x12\x02hi", INVALID, "request"),
        BadInput("invalid UTF-8 in a chat role", b"\x1a\x07\x0a\x05\x0a\x01\xff\x12\x00", INVALID, "request"),
        BadInput("invalid UTF-8 in a stop string", b"\x12\x02hi\x32\x03\x12\x01\xc3", INVALID, "request"),
        BadInput("a lone continuation byte in text", b"\x12\x01\x80", INVALID, "request"),
        BadInput("an overlong encoding in text", b"\x12\x02\xc0\xaf", INVALID, "request"),
        BadInput("field number 0", b"\x02\x00", INVALID, "request"),
        BadInput("GetInfo garbage body", b"\xff\xff", INVALID, "request", method="GetInfo"),
    ]


BAD_INPUTS: list[BadInput] = _option_rows() + _input_rows() + _raw_rows()
