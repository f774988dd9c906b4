"""The engine never imports grpc, protobuf or server code (data flows one way)."""

from __future__ import annotations

import ast
from pathlib import Path

import lil_sparse

FORBIDDEN = ("grpc", "google.protobuf", "server", "lil_client", "eval")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_engine_package_imports_no_server_or_rpc_code() -> None:
    root = Path(lil_sparse.__file__).parent
    offenders = {
        f"{path.relative_to(root)}: {name}"
        for path in root.rglob("*.py")
        for name in imported_modules(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
    }
    assert not offenders
    assert len(list(root.rglob("*.py"))) > 40  # the scan really covered the package
