"""Guardian shadow mode end to end: Python client, lil-client CLI and the server's conversion."""

from __future__ import annotations

import io
import re
from typing import Any

from lil_client import LilClient
from lil_client.cli import main
from lil_client.request import GenerateOptions, build_request

# Every check after the first says stop: no text grows by a million compressed bytes in 4 tokens.
SHADOW = {"guardian": True, "guardian_interval_tokens": 4, "guardian_threshold_bytes": 10**6}


def test_shadow_reports_the_would_stop_step_and_runs_to_the_end(client_server: Any) -> None:
    with LilClient(client_server.address) as client:
        shadow = client.complete(
            "hello", max_new_tokens=20, ignore_eos=True, guardian_shadow=True, return_token_ids=True, **SHADOW
        )
        stopping = client.complete(
            "hello", max_new_tokens=20, ignore_eos=True, return_token_ids=True, **SHADOW
        )
    assert shadow.started is not None and shadow.started.options.guardian.shadow is True
    assert shadow.finish_reason == "length" and shadow.completion_tokens == 20
    g = shadow.guardian
    # Checks after tokens 4, 8, 12, 16 (the length stop at 20 comes first); the second would stop.
    assert (g.enabled, g.shadow, g.checks, g.stop_step, g.applied_at_step) == (True, True, 4, 8, None)
    assert stopping.finish_reason == "early_stop" and stopping.guardian.shadow is False
    assert stopping.guardian.stop_step == 8 and stopping.started is not None
    assert stopping.started.options.guardian.shadow is False  # the server default
    # Greedy: the stopped run is a prefix of the shadow run.
    assert shadow.token_ids[: stopping.completion_tokens] == stopping.token_ids


def test_cli_prints_the_shadow_verdict(client_server: Any) -> None:
    out = io.StringIO()
    flags = ["--max-new-tokens", "20", "--ignore-eos", "--guardian", "--guardian-interval", "4"]
    flags += ["--guardian-threshold", "1000000", "--guardian-shadow"]
    assert main(["--address", client_server.address, "generate", "hello", *flags], out=out) == 0
    summary = out.getvalue().split("\n---\n")[1].strip().splitlines()
    assert summary[0] == "finish: length"
    assert re.fullmatch(r"guardian: shadow, 4 checks, would stop at token 8, [\d.]+ ms CPU", summary[3])


def test_request_carries_shadow_only_when_set() -> None:
    request = build_request("x", options=GenerateOptions(guardian_shadow=False))
    assert request.guardian.HasField("shadow") and request.guardian.shadow is False
    assert not build_request("x").guardian.HasField("shadow")  # absent: the server default
