"""The engine runs on CPU without Triton (a CPU-only install: Triton is a dev extra in
``pyproject.toml``, and :mod:`lil_sparse.kernels` says nothing there is needed on CPU).

The engine runs in a fresh interpreter whose import system refuses ``triton`` (this process has
imported it already: the kernel tests run through its interpreter) and must give the tokens the
engine of this process gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lil_sparse.engine import LLMEngine
from lil_sparse.options import RequestOptions, StoppingOptions

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [5, 17, 42, 9, 88, 3]

REFUSE_TRITON = """
import importlib.abc, importlib.util, json, sys

class RefuseTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "triton":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, RefuseTriton())
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if name == "triton" else find_spec(name, *a, **k)

import server.entrypoint
from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.options import RequestOptions, StoppingOptions

config = EngineConfig(model=sys.argv[1], kv_cache_tokens=4096, max_batch_size=8, guardian_workers=0)
engine = LLMEngine.from_config(config)
options = RequestOptions(stopping=StoppingOptions(max_new_tokens=8, ignore_eos=True))
report = engine.generate([json.loads(sys.argv[2])], [options])[0]
engine.close()
print(json.dumps({"tokens": report.output_token_ids, "triton": "triton" in sys.modules}))
"""


def test_engine_runs_without_triton(engine: LLMEngine, tiny_model_dir: Path) -> None:
    options = RequestOptions(stopping=StoppingOptions(max_new_tokens=8, ignore_eos=True))
    want = engine.generate([PROMPT], [options])[0].output_token_ids
    done = subprocess.run(
        [sys.executable, "-c", REFUSE_TRITON, str(tiny_model_dir), json.dumps(PROMPT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'client' / 'python'}", "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"tokens": want, "triton": False}
    assert len(want) == 8
