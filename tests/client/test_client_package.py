"""The Python client installs on its own (``pip install ./client/python``): grpcio and protobuf,
no torch. Its package metadata pins what the server's does, its sources import nothing but grpc,
protobuf and the standard library, and it imports with the server's stack refused."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "client" / "python"

# Run in a fresh interpreter that sees only the client's folder and refuses the server's stack.
PROBE = """
import sys
REFUSED = {"torch", "numpy", "lil_sparse", "server", "eval", "transformers", "prometheus_client"}

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ImportError(f"the client imported {name}")
        return None

sys.meta_path.insert(0, Refuse())
import lil_client, lil_client.cli, lil_client.client, lil_client.stream, lil_client.connection
from lil_client import AsyncLilClient, LilClient
print(lil_client.cli.main.__module__, LilClient.__name__, AsyncLilClient.__name__)
"""


def requirement_names(requirements: list[str]) -> dict[str, str]:
    """``name -> full requirement`` (the name is the part before any version or marker)."""
    names = {}
    for requirement in requirements:
        name = requirement.split(";")[0]
        for separator in "<>=!~ [":
            name = name.split(separator)[0]
        names[name] = requirement
    return names


def test_client_metadata_pins_what_the_server_pins():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    client = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client_deps = requirement_names(client["dependencies"])
    server_deps = requirement_names(server["dependencies"])
    assert set(client_deps) == {"grpcio", "protobuf"}
    for name, requirement in client_deps.items():
        assert requirement == server_deps[name]  # the committed stubs check the runtime version
    assert client["scripts"] == {"lil-client": server["scripts"]["lil-client"]}


def imported_top_level_modules(path: Path) -> set[str]:
    """Top-level names of every module a source file imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_client_sources_import_only_grpc_protobuf_and_the_standard_library():
    sources = sorted((CLIENT / "lil_client").rglob("*.py"))
    assert len(sources) > 5
    imported = set().union(*(imported_top_level_modules(path) for path in sources))
    assert imported - set(sys.stdlib_module_names) == {"grpc", "google", "lil_client"}


def test_client_imports_without_the_server_stack():
    probe = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(CLIENT)!r})\n{PROBE}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["lil_client.cli", "LilClient", "AsyncLilClient"]
