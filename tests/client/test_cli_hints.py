"""What ``lil-client`` tells a first-time user beside grpc's words: start a server, raise
``--timeout``, which flag a refused field is, that ``--budget`` alone did nothing, and the units
of the summary's kv line (the Go ``lil-stream`` prints the same lines)."""

from __future__ import annotations

import argparse
import io
import socket
from typing import Any

import grpc
import pytest
from lil_client import LilClientError
from lil_client.cli import main
from lil_client.cli_hints import error_hint
from lil_client.cli_output import format_summary
from lil_client.types import GuardianSummary, KVSummary, Summary, Timings

from lil_sparse.testing.step_hold import StepHold


def _closed_port_address() -> str:
    with socket.socket() as probe:  # a port nobody listens on once this closes
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_no_server_at_the_address_says_how_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    address = _closed_port_address()
    code = main(["--address", address, "--timeout", "20", "generate", "hi"], out=io.StringIO())
    lines = capsys.readouterr().err.splitlines()
    assert code == 1 and len(lines) == 2, lines
    assert lines[0].startswith("lil-client: UNAVAILABLE: failed to connect to all addresses")
    assert lines[1] == (
        f"lil-client: no server answered at {address}: start one (`make run`, or `lil-sparse serve`)"
        " or pass --address HOST:PORT (the gRPC port, 50051 by default)"
    )


@pytest.mark.parametrize(
    ("code", "message", "timeout", "hint"),
    [
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "Deadline Exceeded",
            0.5,
            "\nlil-client: the call ran past --timeout 0.5 s; raise it, or leave it out (no deadline)",
        ),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", None, ""),  # a deadline not ours
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "stop_strings[2]: at most 256 bytes, got 300",
            None,
            " (flag --stop)",
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "threshold_bytes: must be >= 0, got -1",
            None,
            " (flag --guardian-threshold)",
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "top_p: must be in (0, 1], got 0.0", None, " (flag --top-p)"),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "sink_tokens: must be >= 0, got -1",
            None,
            " (flag --sink-tokens)",
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "prompt: must not be empty", None, ""),  # no flag sets it
        (grpc.StatusCode.UNAVAILABLE, "the server is draining", None, ""),
    ],
)
def test_error_hints(code: grpc.StatusCode, message: str, timeout: float | None, hint: str) -> None:
    assert error_hint(LilClientError(code, message), "localhost:50051", timeout) == hint


def test_a_refused_field_names_its_flag(client_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--address", client_server.address, "generate", "hi", "--policy", "quest", "--budget", "0"]
    assert main(argv, out=io.StringIO()) == 1
    assert capsys.readouterr().err == (
        "lil-client: INVALID_ARGUMENT: budget_tokens: must be >= 16 (one page of 16 tokens), got 0"
        " (flag --budget)\n"
    )


def test_budget_without_a_policy_notes_that_full_ignored_it(
    client_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--address", client_server.address, "generate", "hi", "--max-new-tokens", "2", "--budget", "64"]
    assert main(base, out=io.StringIO()) == 0  # the server's default policy is full
    assert capsys.readouterr().err == (
        "lil-client: note: --budget 64 changed nothing: the server's default policy is full (dense),"
        " which attends every page; add --policy quest, infllm, sink or h2o\n"
    )
    assert main([*base, "--policy", "quest"], out=io.StringIO()) == 0
    assert capsys.readouterr().err == ""


def test_guardian_flags_without_guardian_note_that_guardian_never_ran(
    client_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--address", client_server.address, "generate", "hi", "--max-new-tokens", "2"]
    tuned = [*base, "--guardian-interval", "50", "--guardian-mode", "incremental"]
    assert main(tuned, out=io.StringIO()) == 0  # the server's default: Guardian off
    assert capsys.readouterr().err == (
        "lil-client: note: --guardian-interval, --guardian-mode changed nothing: Guardian is off"
        " (the server's default); add --guardian\n"
    )
    for chosen in ("--guardian", "--no-guardian"):  # asked for, either way: no note
        assert main([*tuned, chosen], out=io.StringIO()) == 0
        assert capsys.readouterr().err == ""
    assert main(base, out=io.StringIO()) == 0  # no Guardian flag: no note
    assert capsys.readouterr().err == ""


class _HoldOnFirstText(io.StringIO):
    """stdout that holds the engine's steps once text has arrived, so the deadline passes mid-stream."""

    def __init__(self, hold: StepHold) -> None:
        super().__init__()
        self._hold = hold

    def write(self, text: str) -> int:
        if text:
            self._hold.hold()
        return super().write(text)


def test_a_deadline_mid_stream_ends_the_text_line_and_names_the_timeout(
    client_server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hold = StepHold.install(monkeypatch, client_server.server.engine)
    out = _HoldOnFirstText(hold)
    argv = ["--address", client_server.address, "--timeout", "3", "generate", "hello", "--raw"]
    try:
        code = main([*argv, "--max-new-tokens", "1000", "--ignore-eos"], out=out)
    finally:
        hold.release()
    text = out.getvalue()
    assert code == 1 and text and text.endswith("\n") and "---" not in text
    grpc_words, hint = capsys.readouterr().err.splitlines()  # grpc's words vary by version
    assert grpc_words.startswith("lil-client: DEADLINE_EXCEEDED: ")
    assert hint == "lil-client: the call ran past --timeout 3 s; raise it, or leave it out (no deadline)"


def test_kv_line_names_its_units_as_the_go_client_does() -> None:
    """The values and the expected lines of the Go lil-stream's TestSummaryMatchesThePythonClient."""
    summary = Summary(
        request_id="r",
        finish_reason="early_stop",
        prompt_tokens=12,
        completion_tokens=503,
        text="",
        timings=Timings(0.0, 0.0123, 0.00125, 0.0011, 0.002, 0.0, 0.65),
        guardian=GuardianSummary(True, 2, (), 500, 503, 0.00042),
        kv=KVSummary(peak_pages=40, mean_attended_pages=7.96, attended_pages_per_step=()),
    )
    assert format_summary(summary) == "\n".join(
        [
            "finish: early_stop",
            "tokens: prompt 12, completion 503",
            "ttft: 12.3 ms  tbt: mean 1.25 ms, p50 1.10 ms, p95 2.00 ms  jct: 650.0 ms",
            "guardian: on, 2 checks, stop at token 500 (applied 503), 0.42 ms CPU",
            "kv: peak 40 pages (all KV heads), 8.0 pages attended per step and KV head",
        ]
    )


def test_every_hinted_flag_is_a_generate_flag() -> None:
    from lil_client.cli import _parser
    from lil_client.cli_hints import FLAG_OF_FIELD, GUARDIAN_FLAGS

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {flag for action in commands.choices["generate"]._actions for flag in action.option_strings}
    assert set(FLAG_OF_FIELD.values()) <= flags, set(FLAG_OF_FIELD.values()) - flags
    dests = {action.dest: action.option_strings for action in commands.choices["generate"]._actions}
    assert all(flag in dests[dest] for dest, flag in GUARDIAN_FLAGS.items())  # guardian_note's flags
    assert {d for d in dests if d.startswith("guardian_")} == set(GUARDIAN_FLAGS)  # and every one


def test_a_usage_mistake_is_one_line_and_policies_take_any_case(capsys: pytest.CaptureFixture[str]) -> None:
    from lil_client.cli import _parser

    with pytest.raises(SystemExit) as exited:
        main(["generate", "hi", "--policy", "qeust"])
    assert exited.value.code == 2
    # argparse quotes the choices in some Python versions and not in others (gh-86357).
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith("lil-client generate: error: argument --policy: invalid choice: 'qeust'")
    assert second == "(lil-client generate --help lists every flag)"
    assert _parser().parse_args(["generate", "hi", "--policy", "Quest"]).policy == "quest"
