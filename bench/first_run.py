"""First-run figures: `lil-sparse --help`, start to serving, and CPU decode speed per torch thread count.

Each figure is the median of ``--repeats`` runs of the real command in a subprocess:

- help: wall time of ``lil-sparse --help`` and ``lil-sparse serve --help`` (torch is not imported);
- start to serving: from launching ``lil-sparse serve --model MODEL`` to the gRPC health check
  answering SERVING (the first run converts a known GGUF into the cache; later runs load that);
- decode: ``lil-sparse generate`` per-token time (mean TBT it prints) with ``--torch-threads N``.

    python bench/first_run.py [--model smollm2-135m-instruct] [--repeats 3] [--threads 1,2]

Prints a markdown section (machine, date, command) to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

LIL_SPARSE = shutil.which("lil-sparse") or os.path.join(os.path.dirname(sys.executable), "lil-sparse")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def help_seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([LIL_SPARSE, *args, "--help"], check=True, capture_output=True)
    return time.perf_counter() - start


def start_to_serving_seconds(model: str, timeout: float = 300.0) -> float:
    port, metrics_port = _free_port(), _free_port()
    start = time.perf_counter()
    server = subprocess.Popen(
        [LIL_SPARSE, "serve", "--model", model, "--port", str(port), "--metrics-port", str(metrics_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.perf_counter() - start < timeout:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - start
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"not serving after {timeout} s")
    finally:
        server.terminate()
        server.wait(30)


def decode_ms_per_token(model: str, threads: int, tokens: int) -> float:
    done = subprocess.run(
        [LIL_SPARSE, "generate", "--model", model, "--torch-threads", str(threads), "--max-new-tokens",
         str(tokens), "Write a long story about the sea."],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    out = done.stdout + done.stderr  # the summary lines go to stderr
    match = re.search(r"tbt: ([0-9.]+) ms", out)
    if match is None:
        raise RuntimeError(f"no TBT in the output of generate:\n{out[-2000:]}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="torch thread counts to compare")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per generate run")
    args = parser.parse_args()
    median = statistics.median
    rows = [
        ("`lil-sparse --help`", median(help_seconds([]) for _ in range(args.repeats)), "s"),
        ("`lil-sparse serve --help`", median(help_seconds(["serve"]) for _ in range(args.repeats)), "s"),
    ]
    first = start_to_serving_seconds(args.model)  # converts a known GGUF once, if not cached yet
    rows.append(("`serve` start to SERVING, first run of this command", first, "s"))
    later = [start_to_serving_seconds(args.model) for _ in range(args.repeats)]
    rows.append(("`serve` start to SERVING, later runs (converted cache)", median(later), "s"))
    for threads in (int(t) for t in args.threads.split(",")):
        ms = median(decode_ms_per_token(args.model, threads, args.tokens) for _ in range(args.repeats))
        rows.append((f"`generate` mean TBT, --torch-threads {threads}", ms, "ms"))
    print(f"## First run: {args.model}\n")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} cores visible, load average "
          f"{os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    print(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"- command: `python {' '.join(sys.argv)}` (medians of {args.repeats} runs)\n")
    print("| what | median |\n|---|---|")
    for what, value, unit in rows:
        print(f"| {what} | {value:.2f} {unit} |")


if __name__ == "__main__":
    main()
