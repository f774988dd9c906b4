"""A new user's first commands: help without torch, and mistakes that print one line, no traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.background import BackgroundServer
from server.config import ServerConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
HELP_COMMANDS = [
    [],
    ["generate"],
    ["serve"],
    ["convert"],
    ["models"],
    ["models", "list"],
    ["models", "fetch"],
    ["models", "path"],
]
# Runs the console script's main in a fresh interpreter and reports whether torch got imported.
HELP_PROBE = (
    "import sys\n"
    "from server.entrypoint import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "except SystemExit as done:\n"
    "    code = done.code\n"
    "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', code, file=sys.stderr)\n"
)


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "client" / "python")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _lil_sparse(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "server.entrypoint", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO_ROOT)


def _popen_as_from_a_terminal(command: list[str]) -> subprocess.Popen[bytes]:
    """Start ``command`` with SIGINT at its default disposition, as a shell in a terminal starts
    a program: an ignored signal stays ignored across ``exec``, so a test run launched where
    SIGINT is ignored (a background job of a non-interactive shell) would otherwise start a
    client that Ctrl-C cannot reach, and Python installs its KeyboardInterrupt handler only over
    the default. Setting the disposition here (the main thread, as ``signal.signal`` requires)
    rather than in ``preexec_fn`` keeps the fork free of Python code in a threaded process."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # exec resets a handler
    try:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    finally:
        signal.signal(signal.SIGINT, previous)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_answers_without_importing_torch(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, *command, "--help"],
        capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.stderr.strip().splitlines()[-1] == "NO_TORCH 0", done.stderr
    assert done.stdout.startswith("usage: lil-sparse")


def test_unknown_model_name_in_models_fetch() -> None:
    done = _lil_sparse("models", "fetch", "no-such-model")
    assert done.returncode == 2
    assert _one_line(done.stderr).startswith("lil-sparse models: model name: unknown model 'no-such-model'")


def test_generate_with_an_unknown_model() -> None:
    done = _lil_sparse("generate", "--model", "no-such-model", "hello")
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert line.startswith("lil-sparse generate: model: 'no-such-model' is neither a model folder")


def test_busy_port_is_found_before_the_model_loads() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The model does not exist: reaching the loader would fail with a different message.
        done = _lil_sparse("serve", "--model", "/no/such/model", "--host", "127.0.0.1", "--port", str(port))
    assert done.returncode == 2
    assert _one_line(done.stderr) == (
        f"lil-sparse serve: port: 127.0.0.1:{port} is already in use (another server?); "
        "choose another with --port"
    )


@pytest.mark.slow
def test_ctrl_c_in_lil_client_prints_one_line_and_aborts_the_request(
    cli_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lil_client import LilClient

    from lil_sparse.testing.step_hold import StepHold
    from server.app import load_engine

    config = ServerConfig(model=str(cli_model_dir), host="127.0.0.1", port=0, metrics_port=0)
    engine = load_engine(config)
    # Once streaming has begun the engine holds its steps until the client is gone: the stream
    # cannot finish before the Ctrl-C lands, however the machine schedules this process (on a
    # loaded 2-core machine the 1900 tokens once finished first and the client exited 0).
    hold = StepHold.install(monkeypatch, engine)
    with BackgroundServer(config, engine=engine) as server:
        command = [sys.executable, "-m", "lil_client", "--address", server.address, "generate",
                   "hello there", "--max-new-tokens", "1900", "--ignore-eos"]  # fmt: skip
        client = _popen_as_from_a_terminal(command)
        try:
            assert client.stdout is not None and client.stdout.read(1)  # streaming has begun
            hold.hold()
            client.send_signal(signal.SIGINT)
            _, stderr = client.communicate(timeout=60)
        finally:
            hold.release()
        assert client.returncode == 130
        assert _one_line(stderr.decode()) == "lil-client: interrupted"
        deadline = time.monotonic() + 30
        while server.server.engine_loop.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.server.engine_loop.in_flight == 0  # the server aborted the cancelled call
        with LilClient(server.address) as check:  # and still serves
            assert check.complete("hi", max_new_tokens=2).completion_tokens == 2


def test_torch_threads_default_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from lil_sparse.loading.torch_threads import TORCH_THREADS_ENV, auto_torch_threads, set_torch_threads

    before = torch.get_num_threads()
    try:
        assert [auto_torch_threads(cores) for cores in (1, 2, 3, 8, 64)] == [1, 1, 1, 4, 8]
        monkeypatch.delenv(TORCH_THREADS_ENV, raising=False)
        assert set_torch_threads() == auto_torch_threads() == torch.get_num_threads()
        monkeypatch.setenv(TORCH_THREADS_ENV, "3")
        assert set_torch_threads() == 3 == torch.get_num_threads()
        assert set_torch_threads(2) == 2 == torch.get_num_threads()  # the flag wins
        monkeypatch.setenv(TORCH_THREADS_ENV, "many")
        with pytest.raises(
            ValueError, match=r"^torch_threads: LIL_SPARSE_TORCH_THREADS must be a whole number"
        ):
            set_torch_threads()
    finally:
        torch.set_num_threads(before)


def test_serve_with_an_unknown_model_names_the_model_setting() -> None:
    done = _lil_sparse("serve", "--model", "no-such-model", "--port", "0", "--metrics-port", "0")
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert line.startswith("lil-sparse serve: model: 'no-such-model' is neither a model folder")


def test_models_without_an_action_lists_the_actions() -> None:
    done = _lil_sparse("models")
    assert done.returncode == 2
    assert _one_line(done.stderr).startswith("lil-sparse models: action: choose one of {list,fetch,path}")
