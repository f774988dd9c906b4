"""An engine failure in one request's handling ends that stream with INTERNAL; its neighbours
finish normally and the server keeps serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lil_client import LilClient, LilClientError
from server_harness import consume_in_background, start_server, wait_until

POISON_LENGTH = 7  # requests asking for exactly this many tokens fail in the engine's stop checks


def test_a_request_failing_in_the_engine_ends_only_its_stream(
    tiny_model_dir: Path, tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tiny_engine.stop_checker.check

    def check(seq: Any, token: int, stop_string_hit: bool) -> Any:
        if seq.options.stopping.max_new_tokens == POISON_LENGTH and seq.num_output_tokens > 2:
            raise RuntimeError("injected")
        return real(seq, token, stop_string_hit)

    monkeypatch.setattr(tiny_engine.stop_checker, "check", check)
    background = start_server(tiny_model_dir, tiny_engine)
    try:
        with LilClient(background.address) as client:
            neighbour = client.generate("hello there " * 10, max_new_tokens=40, ignore_eos=True)
            consumer, first_chunk, errors = consume_in_background(neighbour)
            assert first_chunk.wait(30)
            with pytest.raises(LilClientError) as raised:
                client.complete("hello there", max_new_tokens=POISON_LENGTH, ignore_eos=True)
            assert raised.value.code.name == "INTERNAL"
            consumer.join(60)
            assert errors == [] and neighbour.summary.completion_tokens == 40
            again = client.complete("hello there", max_new_tokens=5, ignore_eos=True)
            assert again.finish_reason == "length" and again.completion_tokens == 5
        assert wait_until(lambda: tiny_engine.stats().kv_pages_used == 0)
    finally:
        background.stop()
