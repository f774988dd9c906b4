"""The committed stubs are what the generator makes from proto/ today, and they import cleanly."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "client" / "python" / "lil_client" / "_proto"


def _files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def test_regenerated_stubs_match_the_committed_ones(tmp_path: Path) -> None:
    out = tmp_path / "_proto"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "client" / "python" / "gen_proto.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert _files(out) == _files(COMMITTED)
    differing = [name for name in _files(out) if not filecmp.cmp(out / name, COMMITTED / name, shallow=False)]
    assert differing == [], "stubs are stale: run `python client/python/gen_proto.py`"


def test_stubs_use_relative_imports_and_register_canonical_names() -> None:
    from lil_client._proto.lil_sparse.v1 import service_pb2

    assert service_pb2.DESCRIPTOR.name == "lil_sparse/v1/service.proto"
    assert service_pb2.DESCRIPTOR.package == "lil_sparse.v1"
    for path in COMMITTED.rglob("*.py"):
        assert "from lil_sparse.v1 import" not in path.read_text(), path
