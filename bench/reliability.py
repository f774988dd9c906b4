"""Reliability figures of the server on CPU with the tiny test model: chaos, 256 streams,
overload and drain. Writes docs/reliability-figures.json, which docs/reliability.md shows
(regenerate it with ``python tests/server/reliability_doc.py``).

    python bench/reliability.py [--out docs/reliability-figures.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "client" / "python"), str(REPO_ROOT / "tests" / "server")]

from lil_client._proto.lil_sparse.v1 import service_pb2, service_pb2_grpc  # noqa: E402
from test_server_chaos import CANCELS, _chaos  # noqa: E402

from lil_sparse.testing.tiny_model import build_tiny_model  # noqa: E402
from server.background import BackgroundServer  # noqa: E402
from server.config import ServerConfig  # noqa: E402


def _request(prompt: str, max_new_tokens: int) -> service_pb2.GenerateRequest:
    request = service_pb2.GenerateRequest(text=prompt)
    request.stopping.max_new_tokens = max_new_tokens
    request.stopping.ignore_eos = True
    request.sampling.temperature = 0.0
    request.output.return_token_ids = True
    return request


async def _tokens(stub: Any, request: service_pb2.GenerateRequest) -> list[int]:
    return [t async for r in stub.Generate(request) if r.HasField("chunk") for t in r.chunk.token_ids]


async def _streams(address: str, count: int) -> dict[str, Any]:
    prompts = [f"count {i} with me" for i in range(count)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.LilSparseServiceStub(channel)
        alone = [await _tokens(stub, _request(p, 24)) for p in prompts]
        start = time.perf_counter()
        together = await asyncio.gather(*[_tokens(stub, _request(p, 24)) for p in prompts])
        seconds = time.perf_counter() - start
    changed = sum(a != t for a, t in zip(alone, together, strict=True))
    lost = sum(24 - len(t) for t in together)
    return {"streams": count, "seconds": seconds, "lost": lost, "changed": changed}


async def _overload(address: str, count: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.LilSparseServiceStub(channel)

        async def one() -> tuple[str, float, str]:
            start = time.perf_counter()
            try:
                await _tokens(stub, _request("hello", 200))
                return "OK", time.perf_counter() - start, ""
            except grpc.aio.AioRpcError as error:
                return error.code().name, time.perf_counter() - start, error.details() or ""

        results = await asyncio.gather(*[one() for _ in range(count)])
    refused = [seconds for code, seconds, _ in results if code == "RESOURCE_EXHAUSTED"]
    messages = {details for code, _, details in results if code == "RESOURCE_EXHAUSTED"}
    return {
        "sent": count,
        "ok": sum(code == "OK" for code, _, _ in results),
        "refused": len(refused),
        "refusal_median_ms": statistics.median(refused) * 1e3 if refused else 0.0,
        "messages": sorted(messages),
    }


def _drain(model_dir: Path) -> dict[str, float]:
    """SIGTERM with 3 streams in flight: seconds from the last stream's end to the process exit."""
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'client' / 'python'}"}
    command = [
        sys.executable,
        "-m",
        "server",
        "--model",
        str(model_dir),
        "--port",
        "0",
        "--metrics-port",
        "0",
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    port = next(int(m.group(1)) for line in process.stderr if (m := re.search(r"serving port=(\d+)", line)))
    threading.Thread(target=process.stderr.read, daemon=True).start()
    ends: list[float] = []

    def stream() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            list(service_pb2_grpc.LilSparseServiceStub(channel).Generate(_request("count with me", 300)))
        ends.append(time.perf_counter())

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join()
    code = process.wait(60)
    exited = time.perf_counter()
    return {"exit_code": code, "seconds_after_last_stream": exited - max(ends)}


def measure() -> dict[str, Any]:
    from lil_sparse.config import EngineConfig
    from lil_sparse.engine import LLMEngine

    model_dir = build_tiny_model(Path(tempfile.mkdtemp()) / "model", architecture="llama", seed=0)
    engine = LLMEngine.from_config(
        EngineConfig(model=str(model_dir), kv_cache_tokens=65536, max_batch_size=8, guardian_workers=1)
    )
    base: dict[str, Any] = {"model": str(model_dir), "host": "127.0.0.1", "port": 0, "metrics_port": 0}
    with BackgroundServer(ServerConfig(**base, max_running=8, max_waiting=300), engine=engine) as server:
        start = time.perf_counter()
        codes = asyncio.run(_chaos(server.address, seed=1))
        chaos_seconds = time.perf_counter() - start
        time.sleep(0.5)
        pages_after = engine.stats().kv_pages_used
        before_acceptance = server.server.engine_loop.cancelled_before_acceptance
        streams = asyncio.run(_streams(server.address, 256))
    with BackgroundServer(ServerConfig(**base, max_running=8, max_waiting=4), engine=engine) as server:
        overload = asyncio.run(_overload(server.address, 64))
    engine.close()
    drain = _drain(model_dir)
    rows = [
        {
            "what": f"chaos: {CANCELS} cancels at random points",
            "result": (
                f"{codes.get('CANCELLED', 0)} CANCELLED ({before_acceptance} while in the engine's inbox, "
                f"before acceptance), {codes.get('OK', 0)} finished first; "
                f"{pages_after} KV pages used afterwards; {chaos_seconds:.1f} s"
            ),
        },
        {
            "what": "256 concurrent greedy streams of 24 tokens (max_running 8)",
            "result": (
                f"{streams['lost']} tokens lost; {streams['changed']} of 256 streams differ from the "
                f"same request run alone; {streams['seconds']:.1f} s for all 256"
            ),
        },
        {
            "what": "overload: 64 at once, max_running 8 + max_waiting 4",
            "result": (
                f"{overload['ok']} served, {overload['refused']} RESOURCE_EXHAUSTED in a median "
                f"{overload['refusal_median_ms']:.0f} ms; {len(overload['messages'])} distinct message(s)"
            ),
        },
        {
            "what": "drain: SIGTERM with 3 streams in flight",
            "result": (
                f"streams finished; exit code {drain['exit_code']} "
                f"{drain['seconds_after_last_stream']:.2f} s after the last stream ended"
            ),
        },
    ]
    return {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared), {platform.python_version()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": "OMP_NUM_THREADS=1 python bench/reliability.py",
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "reliability-figures.json")
    args = parser.parse_args()
    random.seed(0)
    figures = measure()
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
