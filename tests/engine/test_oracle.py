"""Oracle differential test: the engine's greedy tokens equal a dense float64 recompute whose
attention masks come from token positions (tests/engine/policy_oracle.py), for every policy,
budgets around the prompt size, mixed batches and arrival orders, with freed pages poisoned."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from policy_oracle import OracleRequest, PolicyOracle

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.events import FinishReason
from lil_sparse.options import POLICY_NAMES, RequestOptions, SparseOptions, StoppingOptions

PAGE_SIZE = 4  # small pages: many page boundaries, evictions and selections in short requests


def random_case(rng: random.Random, vocab: int, policy: str, extra_pages: int) -> RequestOptions:
    """A request whose budget is the prompt's pages plus ``extra_pages`` (clipped to what the
    policy's windows need), with random windows and lengths."""
    prompt_pages = rng.randint(2, 9)
    sink_tokens = rng.choice([0, 1, 4, 8])
    recent_tokens = rng.choice([0, 4, 8])
    sink_pages = -(-sink_tokens // PAGE_SIZE)
    recent_pages = -(-recent_tokens // PAGE_SIZE)
    needed = {"sink": sink_pages + 1, "infllm": sink_pages + max(recent_pages, 1) + 1, "h2o": recent_pages}
    budget_pages = max(prompt_pages + extra_pages, needed.get(policy, 1), 2)
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=rng.randint(6, 24), ignore_eos=True),
        sparse=SparseOptions(
            policy=policy,
            budget_tokens=budget_pages * PAGE_SIZE,
            sink_tokens=sink_tokens,
            recent_tokens=recent_tokens,
            dense_layers=rng.choice([0, 1]),
        ),
    )


def oracle_request(prompt: list[int], options: RequestOptions) -> OracleRequest:
    sparse = options.sparse
    evicting_or_full = sparse.policy == "full"
    return OracleRequest(
        prompt=prompt,
        policy=sparse.policy,
        max_new_tokens=options.stopping.max_new_tokens,
        budget_pages=1 << 30 if evicting_or_full else sparse.budget_pages(PAGE_SIZE),
        sink_pages=sparse.sink_pages(PAGE_SIZE),
        recent_pages=1 if evicting_or_full else sparse.recent_pages(PAGE_SIZE),
        dense_layers=sparse.dense_layers if sparse.policy == "quest" else 0,
    )


@pytest.fixture(scope="module", params=["tiny_model_dir", "tiny_qwen_dir"])
def small_page_engine(request: pytest.FixtureRequest):
    """Llama with 2 KV heads for 4 query heads, and Qwen2 with 1 KV head (GQA group of 4)."""
    model_dir: Path = request.getfixturevalue(request.param)
    engine = LLMEngine.from_config(
        EngineConfig(
            model=str(model_dir),
            page_size=PAGE_SIZE,
            kv_cache_tokens=2048,
            max_batch_size=6,
            guardian_workers=0,
            poison_freed_pages=True,
        )
    )
    yield engine
    engine.close()


@pytest.mark.parametrize("seed", range(12))
def test_engine_tokens_equal_the_position_mask_oracle(small_page_engine: LLMEngine, seed: int) -> None:
    engine = small_page_engine
    rng = random.Random(seed)
    vocab = engine.model_config.vocab_size
    cases = []
    for index in range(10):
        policy = POLICY_NAMES[(index + seed) % len(POLICY_NAMES)]
        options = random_case(rng, vocab, policy, extra_pages=rng.choice([-3, -1, 0, 1, 2]))
        # Prompt lengths that end on a page boundary, one past it, and anywhere.
        pages = options.sparse.budget_tokens // PAGE_SIZE + rng.choice([-2, -1, 0, 1, 3])
        length = max(2, pages * PAGE_SIZE + rng.choice([0, 1, -1, rng.randint(-3, 3)]))
        cases.append(([rng.randrange(3, vocab) for _ in range(length)], options))
    # Random arrival: some requests join while others are decoding (batches mix policies,
    # prompt lengths and page counts; max_batch_size makes some wait).
    arrivals = sorted(rng.randint(0, 12) for _ in cases)
    ids: dict[str, int] = {}
    reports = {}
    step = 0
    while len(reports) < len(cases):
        for index, arrival in enumerate(arrivals):
            if arrival == step:
                ids[engine.add_request(*cases[index])] = index
        for event in engine.step():
            if event.report is not None:
                reports[ids[event.request_id]] = event.report
        step += 1
    assert engine.pool.num_used == 0
    oracle = PolicyOracle(engine.runner.model, PAGE_SIZE, engine.model_config.num_kv_heads)
    for index, (prompt, options) in enumerate(cases):
        report = reports[index]
        assert report.finish_reason == FinishReason.LENGTH, report.error
        expected = oracle.generate(oracle_request(prompt, options))
        assert report.output_token_ids == expected, (index, options.sparse, len(prompt))
