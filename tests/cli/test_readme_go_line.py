"""The README's Go command, run exactly as written (only the server address differs)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from server.background import BackgroundServer
from server.config import ServerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DEBIAN_GRPC = Path("/usr/share/gocode/src/google.golang.org/grpc")
README_ADDRESS = "localhost:50051"


def readme_go_line() -> str:
    """The README's one line that runs lil-stream."""
    lines = [line for line in (REPO_ROOT / "README.md").read_text().splitlines() if "cmd/lil-stream" in line]
    assert len(lines) == 1, lines
    return lines[0].strip()


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("go") is None or not DEBIAN_GRPC.is_dir(),
    reason="the Go toolchain and Debian's Go sources come from scripts/go-deps.sh",
)
def test_readme_go_line_streams_a_reply(cli_model_dir: Path) -> None:
    line = readme_go_line()
    assert README_ADDRESS in line and " -raw " not in line  # a chat message: lil-stream's default
    config = ServerConfig(model=str(cli_model_dir), host="127.0.0.1", port=0, metrics_port=0)
    with BackgroundServer(config) as server:
        command = line.replace(README_ADDRESS, f"127.0.0.1:{server.port}")
        done = subprocess.run(
            ["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
        )
    assert done.returncode == 0, done.stderr
    reply, _, summary = done.stdout.partition("\n---\n")
    assert reply.strip(), "the reply is empty"
    tokens = re.search(r"^tokens: prompt (\d+), completion (\d+)$", summary, re.MULTILINE)
    assert tokens is not None, summary
    assert int(tokens.group(2)) > 0
    assert re.search(r"^finish: (eos|length|early_stop|stop_string)$", summary, re.MULTILINE)
    assert summary.splitlines()[-1].startswith("kv: ")
