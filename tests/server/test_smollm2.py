"""Where the text matters: SmolLM2-135M-Instruct behind the server answers a chat question.

Slow (loads a real 94 MiB model); skipped when the model cannot be fetched.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from lil_client import LilClient

from server.background import BackgroundServer
from server.config import ServerConfig

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def smol_server() -> Iterator[BackgroundServer]:
    from lil_sparse.loading.fetcher import fetch_model

    try:
        path = fetch_model("smollm2-135m-instruct", quiet=True)
    except (RuntimeError, OSError) as error:
        pytest.skip(f"SmolLM2 unavailable: {error}")
    config = ServerConfig(model=str(path), host="127.0.0.1", port=0, metrics_port=0, kv_cache_tokens=8192)
    with BackgroundServer(config) as background:  # the server loads the engine itself, like `serve`
        yield background


def test_chat_answer_streams_real_text(smol_server: Any) -> None:
    with LilClient(smol_server.address) as client:
        stream = client.generate(messages=QUESTION, max_new_tokens=40)
        chunks = list(stream)
    summary = stream.summary
    assert "Paris" in summary.text
    assert summary.finish_reason == "eos"
    assert summary.completion_tokens == sum(c.token_count for c in chunks)


def test_sparse_policy_and_stop_string_on_real_text(smol_server: Any) -> None:
    with LilClient(smol_server.address) as client:
        summary = client.complete(
            messages=QUESTION,
            max_new_tokens=40,
            policy="quest",
            budget_tokens=48,
            dense_layers=2,
            stop=["Paris"],
        )
    assert summary.finish_reason == "stop_string"
    assert summary.text.endswith("Paris")
    # The budget caps every decode step at 48 tokens = 3 pages (per KV-head row).
    assert max(summary.kv.attended_pages_per_step) <= 3
