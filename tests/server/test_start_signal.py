"""A signal before the server serves (while the model loads or the engine warms up) ends the
process at once with status 0, without waiting for the start to finish; on a fresh GPU machine
the warm-up takes minutes (docs/bench/first_request.md), and Ctrl-C used to wait it out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_warm_up_ends_the_process_at_once(tiny_model_dir: Path, signum: int) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'client' / 'python'}"}
    command = [sys.executable, "-m", "server", "--model", str(tiny_model_dir), "--host", "127.0.0.1"]
    command += ["--port", "0", "--metrics-port", "0", "--kv-cache-tokens", "4096", "--warm-up", "on"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "warm-up: every policy at page-table widths" in line:
                # Frozen right after the warm-up's first line (it runs for seconds after it),
                # the signal lands while the engine is still warming up.
                process.send_signal(signal.SIGSTOP)
                break
        assert seen and "warm-up: every policy" in seen[-1], "".join(seen)
        process.send_signal(signum)  # pending until the process runs again
        process.send_signal(signal.SIGCONT)
        rest = process.stderr.read()
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "signal received while starting (loading the model or warming up); exiting" in rest
    assert "lil-sparse serving" not in rest  # it never served
    assert "warm-up: " not in rest  # nor finished warming up (its summary line)
