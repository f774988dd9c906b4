"""Start the real SMG gateway (the ``smg`` console script from PyPI) in front of lil-sparse workers.

Workers are in-process servers on loopback, each with its own tiny engine; the gateway is a
subprocess speaking OpenAI HTTP on a free port and SMG's SGLang gRPC to the workers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def smg_binary() -> str | None:
    """The ``smg`` script next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "smg"
    return str(beside) if beside.is_file() else shutil.which("smg")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> tuple[int, Any]:
    """GET (no body) or POST JSON; returns (status, parsed body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class Gateway:
    """``smg launch`` over ``worker_urls``; ``url`` is its OpenAI base, e.g. http://127.0.0.1:PORT."""

    def __init__(self, worker_urls: list[str], log_path: Path) -> None:
        binary = smg_binary()
        if binary is None:
            raise RuntimeError("the smg gateway is not installed (pip install smg)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            binary, "launch", "--host", "127.0.0.1", "--port", str(self.port),
            "--prometheus-port", str(free_port()), "--policy", "round_robin",
            "--worker-urls", *worker_urls, "--log-level", "info",
        ]  # fmt: skip
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, models: set[str], timeout: float = 60.0) -> None:
        """Until /v1/models lists every model in ``models`` and /readiness (healthy workers and
        their tokenizers registered) answers 200; raises with the log tail if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                status, body = http_json(f"{self.url}/v1/models", timeout=2)
                listed = status == 200 and models <= {entry["id"] for entry in body["data"]}
                if listed and http_json(f"{self.url}/readiness", timeout=2)[0] == 200:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"smg gateway not ready:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def scrape(metrics_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a worker's metrics endpoint, keyed by (sample name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def finished(samples: dict[Any, float], **labels: str) -> float:
    """Sum of ``lil_sparse_requests_finished_total`` over samples matching ``labels``."""
    return sum(
        value
        for (name, sample_labels), value in samples.items()
        if name == "lil_sparse_requests_finished_total" and labels.items() <= dict(sample_labels).items()
    )


def wait_until(condition: Any, timeout: float = 30.0) -> bool:
    """Poll ``condition`` until true; the timeout only bounds a hung test, it asserts nothing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())
