"""The whole engine (paged KV cache, reference backend, sampler) on the real SmolLM2 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.loading.convert import convert_gguf
from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions

pytestmark = pytest.mark.slow
PROMPT = "Explain in two sentences why the sky is blue."


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_gguf("smollm2", tmp_path_factory.mktemp("smollm2-engine"))


def test_engine_greedy_equals_transformers_greedy(converted: Path) -> None:
    from transformers import AutoModelForCausalLM

    engine = LLMEngine.from_config(EngineConfig(model=str(converted), dtype="float32", guardian_workers=0))
    prompt = engine.tokenizer.encode(
        engine.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}])
    )
    full = RequestOptions(stopping=StoppingOptions(max_new_tokens=32, ignore_eos=True))
    ours = engine.generate([prompt], [full])[0]

    hf = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    expected: list[int] = []
    with torch.no_grad():
        out = hf(torch.tensor([prompt]), use_cache=True)
        for _ in range(32):
            expected.append(int(out.logits[0, -1].argmax()))
            out = hf(torch.tensor([[expected[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    assert ours.output_token_ids == expected
    assert "blue" in ours.output_text.lower() or "light" in ours.output_text.lower()

    # A tight Quest budget on the same prompt attends fewer pages per step than full.
    quest = RequestOptions(
        stopping=StoppingOptions(max_new_tokens=32, ignore_eos=True),
        sparse=SparseOptions(policy="quest", budget_tokens=32, dense_layers=2),
    )
    sparse = engine.generate([prompt], [quest])[0]
    assert sparse.kv.mean_attended_pages < ours.kv.mean_attended_pages
    assert engine.pool.num_used == 0
    engine.close()
