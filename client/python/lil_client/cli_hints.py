"""What ``lil-client`` adds to a failed call's message or a finished call's summary, so that a
first-time user reads what to do: start a server, raise ``--timeout``, which flag a refused field
is, or that ``--budget`` did nothing under policy ``full``. Pure functions of the call's result."""

from __future__ import annotations

import re

import grpc

from lil_client._proto.lil_sparse.v1 import options_pb2
from lil_client.stream import NOT_GRPC_HINT
from lil_client.types import LilClientError, Summary

# The server names the request field it refuses (``budget_tokens: must be >= 16 ...``, the names
# of options.proto); the error then names the ``generate`` flag that sets the field, whether or not
# the flag's name differs from the field's.
FLAG_OF_FIELD = {
    "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "seed": "--seed",
    "sink_tokens": "--sink-tokens",
    "recent_tokens": "--recent-tokens",
    "dense_layers": "--dense-layers",
    "request_id": "--request-id",
    "budget_tokens": "--budget",
    "stop_strings": "--stop",
    "enabled": "--guardian",
    "interval_tokens": "--guardian-interval",
    "threshold_bytes": "--guardian-threshold",
    "mode": "--guardian-mode",
    "source": "--guardian-source",
    "shadow": "--guardian-shadow",
    "action": "--guardian-action",
    "answer_max_tokens": "--guardian-answer-max-tokens",
}


def error_hint(error: LilClientError, address: str, timeout: float | None) -> str:
    """Text to print after ``error``: a line saying what to do where grpc's words do not (no
    server at ``address``; the ``timeout`` in seconds passed), or `` (flag --x)`` after a refused
    field that a ``generate`` flag sets; "" otherwise."""
    message = error.message.lower()
    if error.code == grpc.StatusCode.UNAVAILABLE and NOT_GRPC_HINT in error.message:
        return ""  # the address answered (in HTTP): the message already says so, not "no server"
    if error.code == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in message or "dns resolution failed" in message
    ):
        return (
            f"\nlil-client: no server answered at {address}: start one (`make run`, or"
            " `lil-sparse serve`) or pass --address HOST:PORT (the gRPC port, 50051 by default)"
        )
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None:
        return (
            f"\nlil-client: the call ran past --timeout {timeout:g} s; raise it, or leave it out"
            " (no deadline)"
        )
    if error.code == grpc.StatusCode.INVALID_ARGUMENT:
        field = re.split(r"[:\[]", error.message, maxsplit=1)[0]
        if field in FLAG_OF_FIELD:
            return f" (flag {FLAG_OF_FIELD[field]})"
    return ""


def budget_note(budget_tokens: int | None, policy: str | None, summary: Summary) -> str:
    """A note when ``--budget`` was given without ``--policy`` and the server's default policy,
    which the request ran with, is ``full``: dense decode ignores the budget (README, per-call
    options). "" otherwise."""
    if budget_tokens is None or policy is not None or summary.started is None:
        return ""
    if summary.started.options.sparse.policy != options_pb2.POLICY_FULL:
        return ""
    return (
        f"note: --budget {budget_tokens} changed nothing: the server's default policy is full"
        " (dense), which attends every page; add --policy quest, infllm, sink or h2o"
    )


# The generate flags that tune Guardian (argparse dest -> flag): each changes nothing unless
# Guardian runs, which --guardian or the server's default decides.
GUARDIAN_FLAGS = {
    "guardian_interval_tokens": "--guardian-interval",
    "guardian_threshold_bytes": "--guardian-threshold",
    "guardian_mode": "--guardian-mode",
    "guardian_source": "--guardian-source",
    "guardian_shadow": "--guardian-shadow",
    "guardian_action": "--guardian-action",
    "guardian_answer_max_tokens": "--guardian-answer-max-tokens",
}


def guardian_note(given: list[str], guardian: bool | None, summary: Summary) -> str:
    """A note when Guardian flags (``given``, by their positive names) were passed without ``--guardian`` /
    ``--no-guardian`` (``guardian`` None) and the request ran with Guardian off, the server's
    default: the flags tune a Guardian that never ran. "" otherwise."""
    if not given or guardian is not None or summary.started is None:
        return ""
    if summary.started.options.guardian.enabled:
        return ""
    flags = ", ".join(given)
    return f"note: {flags} changed nothing: Guardian is off (the server's default); add --guardian"
