"""Helpers for server tests: start a background server, scrape metrics, wait for a condition."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from lil_client import LilClientError
from prometheus_client.parser import text_string_to_metric_families

from server.background import BackgroundServer
from server.config import ServerConfig


def start_server(model_dir: Any, engine: Any, **overrides: Any) -> BackgroundServer:
    settings: dict[str, Any] = {"model": str(model_dir), "host": "127.0.0.1", "port": 0, "metrics_port": 0}
    settings.update(overrides)
    return BackgroundServer(ServerConfig(**settings), engine=engine).start()


def scrape(metrics_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metrics endpoint, keyed by (sample name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``condition`` until true; the timeout only bounds a hung test, it asserts nothing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def consume_in_background(
    stream: Any, on_first_chunk: Callable[[], None] | None = None
) -> tuple[threading.Thread, threading.Event, list[Any]]:
    """Read a client stream on a thread; the event fires at the first chunk, right after
    ``on_first_chunk`` ran on that thread. Cancel errors are kept."""
    first_chunk = threading.Event()
    errors: list[Any] = []

    def consume() -> None:
        try:
            for _ in stream:
                if not first_chunk.is_set():
                    if on_first_chunk is not None:
                        on_first_chunk()
                    first_chunk.set()
        except LilClientError as error:
            errors.append(error)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread, first_chunk, errors
