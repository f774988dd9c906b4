"""Greedy ``full`` decoding of a real model gives the same 64 tokens on both backends.

The model is a GGUF (SmolLM2-135M-Instruct by default) named by ``LIL_GPU_MODEL``; the test
skips when it is not there (no hub on the GPU machine: bench/device_run.sh carries it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.loading import load_model
from lil_sparse.options import RequestOptions, StoppingOptions

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")

MODEL = Path(os.environ.get("LIL_GPU_MODEL", "/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
QUESTIONS = (
    "What is 17 times 23? Please reason step by step.",
    "Write a short poem about the sea.",
)


@pytest.mark.skipif(not MODEL.is_file(), reason=f"no model at {MODEL} (set LIL_GPU_MODEL)")
def test_greedy_full_64_tokens_identical_on_both_backends():
    loaded = load_model(MODEL, torch.bfloat16, "cuda")
    prompts = [
        loaded.tokenizer.encode(loaded.tokenizer.apply_chat_template([{"role": "user", "content": q}]))
        for q in QUESTIONS
    ]
    options = [RequestOptions(stopping=StoppingOptions(max_new_tokens=64, ignore_eos=True))] * len(prompts)
    outputs = {}
    for backend, graphs in (("reference", False), ("flashinfer", False), ("flashinfer", True)):
        config = EngineConfig(
            model=str(MODEL),
            device="cuda",
            dtype="bfloat16",
            backend=backend,
            kv_cache_tokens=8192,
            max_batch_size=4,
            guardian_workers=0,
            cuda_graphs=graphs,
        )
        engine = LLMEngine(loaded, config)
        outputs[backend, graphs] = [r.output_token_ids for r in engine.generate(prompts, options)]
        engine.close()
    reference = outputs["reference", False]
    assert all(len(tokens) == 64 for tokens in reference)
    assert outputs["flashinfer", False] == reference
    assert outputs["flashinfer", True] == reference
