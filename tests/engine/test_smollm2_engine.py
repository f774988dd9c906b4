"""The whole engine (paged KV cache, reference backend, sampler) on the real SmolLM2 weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.events import FinishReason
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


@pytest.fixture(scope="module")
def smollm2_engine(converted: Path):
    engine = LLMEngine.from_config(
        EngineConfig(model=str(converted), dtype="float32", guardian_workers=0, poison_freed_pages=True)
    )
    yield engine
    engine.close()


def chat(engine: LLMEngine, text: str) -> list[int]:
    return engine.tokenizer.encode(engine.tokenizer.apply_chat_template([{"role": "user", "content": text}]))


def test_stop_par_keeps_the_stop_string_and_nothing_after(smollm2_engine: LLMEngine) -> None:
    engine = smollm2_engine
    prompt = chat(engine, "What is the capital of France?")
    plain = engine.generate([prompt], [RequestOptions(stopping=StoppingOptions(max_new_tokens=20))])[0]
    assert plain.output_text == "The capital of France is Paris."
    request_id = engine.add_request(
        prompt, RequestOptions(stopping=StoppingOptions(max_new_tokens=20, stop_strings=("Par",)))
    )
    streamed = ""
    reports = []
    while engine.has_unfinished():
        for event in engine.step():
            assert event.request_id == request_id
            streamed += event.text_delta
            reports += [event.report] if event.report is not None else []
    (final,) = reports
    assert final.finish_reason == FinishReason.STOP_STRING
    assert streamed == final.output_text == "The capital of France is Par"
    # The token " Paris" completed the stop string: it is kept, its text after "Par" is not.
    assert final.output_token_ids == plain.output_token_ids[:6]


@pytest.mark.parametrize("policy", ["sink", "h2o", "quest", "infllm"])
def test_a_budget_holding_the_whole_sequence_equals_full_attention(
    smollm2_engine: LLMEngine, policy: str
) -> None:
    """39 prompt tokens + 14 new fit the 64-token budget (4 pages): the page that brings the
    sequence to its budget must not also evict (it used to attend a page nothing wrote)."""
    engine = smollm2_engine
    prompt = chat(engine, "Tell me a fun fact about octopuses.")
    assert len(prompt) == 39
    stopping = StoppingOptions(max_new_tokens=14, ignore_eos=True)
    full = engine.generate([prompt], [RequestOptions(stopping=stopping)])[0]
    sparse = RequestOptions(stopping=stopping, sparse=SparseOptions(policy=policy, budget_tokens=64))
    assert engine.generate([prompt], [sparse])[0].output_token_ids == full.output_token_ids
    assert engine.pool.num_used == 0
