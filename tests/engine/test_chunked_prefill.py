"""Chunked prefill: same outputs and page metadata as one pass, fair to running streams, abortable."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lil_sparse.attention.chunked_prefill import chunk_attention, gather_prompt_kv
from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.engine.scheduler import Scheduler
from lil_sparse.engine.sequence import Sequence
from lil_sparse.events import FinishReason
from lil_sparse.options import POLICY_NAMES, RequestOptions, SparseOptions, StoppingOptions

PAGE_SIZE = 16
# Multiples of the page size (16, 48, 64) and of the chunk budgets below, one token, odd lengths.
PROMPT_LENGTHS = (1, 16, 23, 48, 64, 97, 130)
BUDGETS = (8, 16, 24, 64)  # tokens per step; >= max_batch_size


def make_engine(model_dir: Path, budget: int, chunked: bool = True, max_batch_size: int = 8) -> LLMEngine:
    return LLMEngine.from_config(
        EngineConfig(
            model=str(model_dir),
            kv_cache_tokens=4096,
            max_batch_size=max_batch_size,
            guardian_workers=0,
            page_size=PAGE_SIZE,
            chunked_prefill=chunked,
            max_num_batched_tokens=budget,
            poison_freed_pages=True,  # attending KV nothing wrote fails the step with NaN logits
        )
    )


def prompt(length: int, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 384, (length,), generator=generator).tolist()


PROMPTS = [prompt(length, seed=length) for length in PROMPT_LENGTHS]


def options(policy: str, max_new: int = 6) -> RequestOptions:
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=max_new, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=32, sink_tokens=4, dense_layers=1),
    )


def run_collecting_logprobs(engine: LLMEngine, prompts: list[list[int]], opts: list[RequestOptions]):
    ids = [engine.add_request(p, o) for p, o in zip(prompts, opts, strict=True)]
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    logprobs: dict[str, list[float]] = {i: [] for i in ids}
    while engine.has_unfinished():
        for event in engine.step():
            tokens[event.request_id].extend(event.token_ids)
            logprobs[event.request_id].extend(event.logprobs)
    return [tokens[i] for i in ids], [logprobs[i] for i in ids]


# ---- the chunk attention itself ---------------------------------------------------------------
@pytest.mark.parametrize("length,chunk", [(1, 1), (16, 16), (40, 7), (64, 16), (100, 33)])
def test_chunk_attention_over_pages_equals_causal_attention(length: int, chunk: int) -> None:
    torch.manual_seed(0)
    heads, kv_heads, dim, page_size = 6, 2, 8, 4
    q = torch.randn(length, heads, dim)
    k = torch.randn(length, kv_heads, dim)
    v = torch.randn(length, kv_heads, dim)
    expected = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.transpose(0, 1).repeat_interleave(3, 0),
        v.transpose(0, 1).repeat_interleave(3, 0),
        is_causal=True,
    ).transpose(0, 1)
    # Scatter the keys over shuffled pages, one page list per KV head, as the cache holds them.
    num_pages = -(-length // page_size)
    page_ids = torch.randperm(2 * num_pages * kv_heads)[: num_pages * kv_heads].view(kv_heads, num_pages)
    k_pages = torch.zeros(2 * num_pages * kv_heads, 1, page_size, dim)
    v_pages = torch.zeros_like(k_pages)
    position = torch.arange(length)
    for head in range(kv_heads):
        pages = page_ids[head, position // page_size]
        k_pages[pages, 0, position % page_size] = k[:, head]
        v_pages[pages, 0, position % page_size] = v[:, head]
    out = torch.empty_like(q)
    for start in range(0, length, chunk):
        end = min(length, start + chunk)
        keys, values = gather_prompt_kv(k_pages, v_pages, page_ids, end)
        assert torch.equal(keys, k[:end]) and torch.equal(values, v[:end])
        out[start:end] = chunk_attention(q[start:end], keys, values)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_chunk_attention_refuses_more_queries_than_keys() -> None:
    with pytest.raises(ValueError, match="needs at least 5 keys"):
        chunk_attention(torch.zeros(5, 2, 4), torch.zeros(4, 1, 4), torch.zeros(4, 1, 4))


# ---- config -----------------------------------------------------------------------------------
def test_budget_is_validated_and_defaults_per_device() -> None:
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        EngineConfig(max_batch_size=16, max_num_batched_tokens=8)
    assert EngineConfig().step_token_budget == 512
    assert EngineConfig(device="cuda").step_token_budget == 2048
    assert EngineConfig(max_num_batched_tokens=100).step_token_budget == 100


# ---- same outputs as one pass -----------------------------------------------------------------
def run_on_fresh_engine(
    model_dir: Path, budget: int, prompts: list[list[int]], policy: str, chunked: bool = True
) -> tuple[list[list[int]], list[list[float]]]:
    # A fresh engine each time: both sides start from the same empty pages and page ids.
    engine = make_engine(model_dir, budget, chunked=chunked)
    try:
        result = run_collecting_logprobs(engine, prompts, [options(policy)] * len(prompts))
        assert engine.stats().kv_pages_used == 0
        return result
    finally:
        engine.close()


@pytest.fixture(scope="module")
def unchunked_runs(tiny_model_dir: Path) -> dict[str, list[tuple[list[int], list[float]]]]:
    """Per policy: each prompt of PROMPT_LENGTHS alone on an unchunked engine (tokens, logprobs)."""
    runs = {}
    for policy in POLICY_NAMES:
        runs[policy] = []
        for p in PROMPTS:
            tokens, logprobs = run_on_fresh_engine(tiny_model_dir, 0, [p], policy, chunked=False)
            runs[policy].append((tokens[0], logprobs[0]))
    return runs


def run_alone(engine: LLMEngine, tokens: list[int], policy: str) -> tuple[list[int], list[float]]:
    got_tokens, got_logprobs = run_collecting_logprobs(engine, [tokens], [options(policy)])
    return got_tokens[0], got_logprobs[0]


@pytest.mark.parametrize("budget", (0, *BUDGETS))  # 0: unchunked
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_a_reused_engine_gives_the_unchunked_fresh_engine_tokens_and_logprobs(
    tiny_model_dir: Path, unchunked_runs: dict, budget: int, policy: str
) -> None:
    """One engine serves every prompt in turn, then all of them together (chunks of several
    requests share steps with each other and with decode rows), then each again in reverse
    order: its freed pages come back poisoned and are reused under other requests, and every
    request still equals its solo unchunked run on a fresh engine."""
    expected = unchunked_runs[policy]
    engine = make_engine(tiny_model_dir, budget, chunked=budget > 0)
    try:
        for p, (tokens, logprobs) in zip(PROMPTS, expected, strict=True):
            got_tokens, got_logprobs = run_alone(engine, p, policy)
            assert got_tokens == tokens
            assert got_logprobs == pytest.approx(logprobs, rel=1e-4, abs=1e-4)
        together, _ = run_collecting_logprobs(engine, PROMPTS, [options(policy)] * len(PROMPTS))
        assert together == [tokens for tokens, _ in expected]
        for p, (tokens, _) in reversed(list(zip(PROMPTS, expected, strict=True))):
            assert run_alone(engine, p, policy)[0] == tokens
        assert engine.stats().kv_pages_used == 0
    finally:
        engine.close()


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_one_kv_head_model_chunked_equals_unchunked(tiny_qwen_dir: Path, policy: str) -> None:
    expected = [run_on_fresh_engine(tiny_qwen_dir, 0, [p], policy, chunked=False)[0] for p in PROMPTS[-3:]]
    engine = make_engine(tiny_qwen_dir, 8)  # reused: each prompt runs on the pages the last freed
    try:
        assert [[run_alone(engine, p, policy)[0]] for p in PROMPTS[-3:]] == expected
    finally:
        engine.close()


def prefill_only(engine: LLMEngine, tokens: list[int], policy: str) -> Sequence:
    """Run a request until its prompt is in the cache (one output token, pages still held)."""
    rid = engine.add_request(tokens, options(policy, max_new=4))
    seq = engine._sequences[rid]
    while seq.num_output_tokens == 0:
        engine.step()
    return seq


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("length", [48, 97])
def test_chunked_prefill_leaves_the_single_pass_pages_and_metadata(
    tiny_model_dir: Path, policy: str, length: int
) -> None:
    tokens = prompt(length, seed=7)
    engines = [make_engine(tiny_model_dir, 0, chunked=False), make_engine(tiny_model_dir, 8)]
    try:
        seqs = [prefill_only(engine, tokens, policy) for engine in engines]
        assert seqs[0].num_prefill_chunks == 1
        assert seqs[1].num_prefill_chunks == -(-length // 8)
        assert seqs[0].held_pages == seqs[1].held_pages
        held = seqs[0].held_pages
        tables = [e.pages.table.table[s.slot, :, :held] for e, s in zip(engines, seqs, strict=True)]
        # Same allocation order, same evictions: the same page ids in the same places.
        assert torch.equal(tables[0], tables[1])
        pages = tables[0].flatten().long()
        one, two = engines[0].kv, engines[1].kv
        # Equal to float32 rounding: matmuls over another number of rows round differently.
        # The last page's slots beyond the prompt were never written: poisoned (NaN) in both.
        for name in ("k", "v", "key_bounds", "key_sum", "key_mean"):
            torch.testing.assert_close(
                getattr(two, name)[:, pages], getattr(one, name)[:, pages], equal_nan=True
            )
        torch.testing.assert_close(two.attention_mass[pages], one.attention_mass[pages])
        if policy in ("quest", "infllm"):  # the metadata they read was written
            assert bool(torch.isfinite(one.key_bounds[:, pages]).all())
        if policy == "h2o":
            assert float(one.attention_mass[pages].sum()) > 0
    finally:
        for engine in engines:
            engine.close()


# ---- fairness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("chunked", [True, False])
def test_a_running_stream_gets_a_token_between_the_chunks_of_a_long_prompt(
    tiny_model_dir: Path, chunked: bool
) -> None:
    budget, long_length = 16, 200
    engine = make_engine(tiny_model_dir, budget, chunked=chunked)
    try:
        stream = engine.add_request(prompt(10), options("full", max_new=100))
        engine.step()  # the stream's prefill and first token
        long_id = engine.add_request(prompt(long_length, seed=1), options("quest", max_new=3))
        long_seq = engine._sequences[long_id]
        stream_tokens_during_prefill = 0
        progress = []
        while long_seq.num_output_tokens == 0:
            events = engine.step()
            progress.append(long_seq.num_cached_tokens)
            stream_tokens_during_prefill += sum(len(e.token_ids) for e in events if e.request_id == stream)
            if long_seq.num_output_tokens == 0:
                stats = engine.stats()
                assert (stats.num_running, stats.num_prefilling, stats.num_waiting) == (2, 1, 0)
        if chunked:
            # Each step: one token for the stream, the other 15 of the budget for the prompt.
            chunks = -(-long_length // (budget - 1))
            assert progress == [min(long_length, (i + 1) * (budget - 1)) for i in range(chunks)]
            assert long_seq.num_prefill_chunks == chunks == 14
            assert stream_tokens_during_prefill == chunks
        else:
            assert progress == [long_length]
            assert long_seq.num_prefill_chunks == 1
            assert stream_tokens_during_prefill == 0
        assert engine.stats().num_prefilling == 0
        engine.abort(stream)
        engine.abort(long_id)
        engine.step()
    finally:
        engine.close()


def test_abort_during_prefill_frees_every_page_after_at_most_one_chunk(tiny_model_dir: Path) -> None:
    engine = make_engine(tiny_model_dir, 16)
    try:
        stream = engine.add_request(prompt(5), options("h2o", max_new=50))
        engine.step()
        stream_pages = engine.stats().kv_pages_used
        long_id = engine.add_request(prompt(300, seed=3), options("full", max_new=4))
        long_seq = engine._sequences[long_id]
        engine.step()  # the first chunk: every prompt page is allocated at admission
        assert long_seq.num_prefill_chunks == 1
        assert engine.stats().kv_pages_used == stream_pages + -(-300 // PAGE_SIZE) * 2
        engine.abort(long_id)
        events = engine.step()
        finals = [e for e in events if e.request_id == long_id]
        assert [e.finish_reason for e in finals] == [FinishReason.ABORTED]
        assert finals[0].report is not None and finals[0].report.completion_tokens == 0
        assert long_seq.num_prefill_chunks == 1
        assert engine.stats().kv_pages_used == stream_pages
        assert engine.stats().num_prefilling == 0
        # The running stream was not disturbed: it produced its token in both steps.
        assert [len(e.token_ids) for e in events if e.request_id == stream] == [1]
        engine.abort(stream)
        engine.step()
        assert engine.stats().kv_pages_used == 0
        assert not engine.has_unfinished()
    finally:
        engine.close()


@pytest.mark.parametrize("chunked", [True, False])
def test_the_server_loop_publishes_a_prefilling_request_between_chunks(
    tiny_model_dir: Path, chunked: bool
) -> None:
    """The gauges read EngineLoop's stats, published after every step: a prefilling request is
    running and holds pages there before its first token."""
    from server.engine_loop import EngineLoop, LoopStats

    engine = make_engine(tiny_model_dir, 16, chunked=chunked)
    timeline: list[LoopStats | str] = []  # both written on the engine thread, in order
    loop = EngineLoop(engine, max_running=4, max_waiting=4, on_stats=timeline.append)
    loop.start()
    try:
        done = threading.Event()

        def sink(event) -> None:
            if not isinstance(event, BaseException) and event.token_ids:
                timeline.append("token")
            if isinstance(event, BaseException) or event.finished:
                done.set()

        accepted = loop.submit("long", prompt(200, seed=5), options("full", max_new=2), sink)
        assert accepted.result(timeout=60) == "long"
        assert done.wait(timeout=120)
    finally:
        loop.stop(timeout=60)
        engine.close()
    before_first_token = timeline[: timeline.index("token")]
    prefilling = [
        s for s in before_first_token if isinstance(s, LoopStats) and s.num_running == 1 and s.kv_pages_used
    ]
    # Every step but the last of the prefill ends with a snapshot; unchunked, the one step
    # produces the token before its snapshot.
    assert len(prefilling) == (-(-200 // 16) - 1 if chunked else 0)
    pages = -(-200 // PAGE_SIZE) * 2  # two KV heads
    assert prefilling == [LoopStats(1, 1, 0, pages, engine.pool.num_pages)] * len(prefilling)


# ---- the scheduler alone ----------------------------------------------------------------------
def test_every_step_stays_within_the_budget_and_advances_every_decode_row() -> None:
    budget, max_new = 32, 5
    scheduler = Scheduler(
        num_pages=10_000,
        num_kv_heads=2,
        page_size=PAGE_SIZE,
        max_batch_size=4,
        max_waiting=16,
        max_prefill_tokens=8192,
        step_token_budget=budget,
    )
    lengths = [100, 3, 40, 31, 64, 1, 200]
    seqs = [
        Sequence(
            request_id=f"r{i}",
            prompt_token_ids=prompt(n, seed=i),
            options=options("full", max_new),
            budget_pages=1 << 30,
            sink_pages=0,
            recent_pages=1,
            reserved_pages=scheduler.reservation(n, max_new, "full", 1 << 30),
        )
        for i, n in enumerate(lengths)
    ]
    for seq in seqs:
        scheduler.add(seq)
    admitted: list[str] = []
    steps = 0
    while (batch := scheduler.schedule()) is not None:
        steps += 1
        admitted += [s.request_id for s in batch.admitted]
        running_decoders = [s for s in scheduler.running if not s.is_prefilling]
        assert batch.decode == running_decoders  # every decoding request gets its token
        assert len(batch.decode) + sum(c.num_tokens for c in batch.prefill) <= budget
        assert all(c.start == c.seq.num_cached_tokens and c.num_tokens > 0 for c in batch.prefill)
        for chunk in batch.prefill:  # what the runner does
            chunk.seq.num_cached_tokens = chunk.end
        for seq in [*batch.decode, *(c.seq for c in batch.prefill if c.is_last)]:
            seq.output_token_ids.append(0)
            if seq.num_output_tokens == max_new:
                scheduler.finish(seq)
    assert admitted == [s.request_id for s in seqs]  # first come, first served
    assert all(s.num_output_tokens == max_new for s in seqs)
    assert scheduler.reserved_pages == 0 and scheduler.num_running == 0
    # The prompts (439 tokens) and decode rows need more than 439 / 32 steps but far fewer than
    # one step per token.
    assert sum(lengths) // budget < steps < sum(lengths)


# ---- isolation --------------------------------------------------------------------------------
class InjectedFault(RuntimeError):
    pass


def isolation_requests() -> tuple[list[list[int]], list[RequestOptions]]:
    """With a budget of 16: step 1 runs the stream's whole prompt and the victim's first 11
    tokens; step 2 decodes the stream and runs the victim's last 9 tokens beside the whole
    6-token prompt of the other request, in one prefill call that completes both prompts (so the
    victim's logits row must be dropped from the step's sampling)."""
    prompts = [prompt(5, seed=11), prompt(20, seed=12), prompt(6, seed=13)]
    policies = ["full", "h2o", "sink"]
    return prompts, [options(policy, max_new=8) for policy in policies]


@pytest.mark.parametrize("stage", ["record_chunk", "prefill"])
def test_a_failing_chunk_fails_only_the_requests_it_belongs_to(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """A fault in the victim's chunk bookkeeping fails the victim alone (the other request of
    that prefill call keeps its solo tokens); a fault in the prefill call fails the requests it
    ran, not the decode rows of the step. Every page comes back either way."""
    engine = make_engine(tiny_model_dir, 16)
    try:
        prompts, opts = isolation_requests()
        solo = [engine.generate([p], [o])[0].output_token_ids for p, o in zip(prompts, opts, strict=True)]
        ids = [engine.add_request(p, o) for p, o in zip(prompts, opts, strict=True)]
        victim = engine._sequences[ids[1]]
        real = getattr(engine.runner, stage)

        def failing(arg):
            chunks = arg if isinstance(arg, list) else [arg]
            if any(c.seq is victim and c.is_last for c in chunks):
                raise InjectedFault(stage)
            return real(arg)

        monkeypatch.setattr(engine.runner, stage, failing)
        reports = {}
        while engine.has_unfinished():
            reports.update({e.request_id: e.report for e in engine.step() if e.report is not None})
        failed = [1] if stage == "record_chunk" else [1, 2]  # the call held the victim and ids[2]
        for index, request_id in enumerate(ids):
            report = reports[request_id]
            if index in failed:
                assert report.finish_reason == FinishReason.ERROR
                assert report.error.startswith("prefill:" if stage == "record_chunk" else "model:")
                assert report.output_token_ids == []
            else:
                assert report.finish_reason == FinishReason.LENGTH
                assert report.output_token_ids == solo[index]
        assert engine.pool.num_used == 0 and engine.scheduler.reserved_pages == 0
        monkeypatch.undo()
        assert engine.generate(prompts, opts)[1].output_token_ids == solo[1]
    finally:
        engine.close()
