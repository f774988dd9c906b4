"""Health, reflection and GetInfo; draining in process and SIGTERM on a real subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from lil_client import LilClient, LilClientError
from server_harness import consume_in_background, start_server, wait_until

from lil_sparse.testing.step_hold import StepHold

SERVICE = "lil_sparse.v1.LilSparseService"
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status
        )


def test_health_info_and_reflection(tiny_model_dir: Path, tiny_engine: Any) -> None:
    background = start_server(tiny_model_dir, tiny_engine, max_running=3, max_waiting=5)
    try:
        assert _health(background.address, "") == SERVING
        assert _health(background.address, SERVICE) == SERVING
        with LilClient(background.address) as client:
            info = client.info()
        assert (info.architecture, info.max_context, info.page_size, info.num_layers) == (
            "llama",
            2048,
            16,
            2,
        )
        assert [p.name for p in info.policies] == ["full", "sink", "h2o", "quest", "infllm"]
        assert info.policies[3].defaults.budget_tokens == 512
        assert (info.limits.max_running, info.limits.max_waiting) == (3, 5)
        assert info.default_options.stopping.max_new_tokens == 256
        assert info.server_version
        assert (info.selection, info.overlap_scheduling) == ("exact", False)  # CPU defaults
        with grpc.insecure_channel(background.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            (reply,) = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        assert SERVICE in {s.name for s in reply.list_services_response.service}
    finally:
        background.stop()


def test_reflection_can_be_turned_off(tiny_model_dir: Path, tiny_engine: Any) -> None:
    background = start_server(tiny_model_dir, tiny_engine, reflection=False)
    try:
        with grpc.insecure_channel(background.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                list(
                    stub.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                    )
                )
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        background.stop()


def test_drain_flips_health_refuses_new_calls_and_finishes_in_flight(
    tiny_model_dir: Path, tiny_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = StepHold.install(monkeypatch, tiny_engine)  # the stream is in flight while it drains
    background = start_server(tiny_model_dir, tiny_engine)
    with LilClient(background.address) as client:
        stream = client.generate("hello", max_new_tokens=300, ignore_eos=True)
        consumer, first_chunk, errors = consume_in_background(stream, hold.hold)
        assert first_chunk.wait(30)
        drained = background.drain_async(grace_seconds=60)
        assert wait_until(lambda: _health(background.address, SERVICE) == NOT_SERVING)
        # Liveness stays SERVING: a draining pod is healthy and must not be killed by its probe.
        assert _health(background.address, "") == SERVING
        with pytest.raises(LilClientError) as refused:
            client.complete("hello", max_new_tokens=2)
        assert not drained.done()  # the held stream keeps the drain waiting
        hold.release()
        consumer.join(60)
        drained.result(60)
    background.stop()
    assert (refused.value.code, refused.value.message) == (
        grpc.StatusCode.UNAVAILABLE,
        "server is shutting down",
    )
    assert errors == []
    assert (stream.summary.finish_reason, stream.summary.completion_tokens) == ("length", 300)


@pytest.mark.slow
def test_sigterm_with_streams_in_flight_finishes_them_and_exits_zero(tiny_model_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'client' / 'python'}"}
    env["LIL_SPARSE_GRACE_PERIOD_SECONDS"] = "60"  # read from the environment, like the Helm chart does
    command = [sys.executable, "-m", "server", "--model", str(tiny_model_dir), "--host", "127.0.0.1"]
    command += ["--port", "0", "--metrics-port", "0", "--kv-cache-tokens", "4096"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        assert process.stderr is not None
        for line in process.stderr:
            match = re.search(r"lil-sparse serving port=(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port is not None, "server never announced its port"
        threading.Thread(target=process.stderr.read, daemon=True).start()  # keep the pipe drained

        summaries: list[Any] = []
        clients = [LilClient(f"127.0.0.1:{port}") for _ in range(3)]
        streams = [c.generate("count with me", max_new_tokens=1000, ignore_eos=True) for c in clients]
        # The server is frozen (SIGSTOP) by the thread that reads the last of the three first
        # chunks, right as it reads it: the streams cannot finish before SIGTERM lands, however
        # this test's main thread is scheduled (their 1000 tokens take about 1 s on the tiny model).
        started, lock = [0], threading.Lock()

        def freeze_at_the_last_first_chunk() -> None:
            with lock:
                started[0] += 1
                if started[0] == len(streams):
                    process.send_signal(signal.SIGSTOP)

        consumers = [consume_in_background(s, freeze_at_the_last_first_chunk) for s in streams]
        for _, first_chunk, _ in consumers:
            assert first_chunk.wait(60)
        assert all(thread.is_alive() for thread, _, _ in consumers)  # frozen mid-stream
        process.send_signal(signal.SIGTERM)  # pending until the server runs again
        process.send_signal(signal.SIGCONT)
        for thread, _, errors in consumers:
            thread.join(120)
            assert errors == []
        summaries = [s.summary for s in streams]
        for client in clients:
            client.close()
        assert process.wait(120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert [(s.finish_reason, s.completion_tokens) for s in summaries] == [("length", 1000)] * 3
