"""The start-up warm-up (lil_sparse/engine/warm_up.py) on CPU: what it runs, that it leaves the
engine as a fresh one (no request, no page, step counters at zero, the same tokens for a
request), and that a failing warm-up request fails the start with its error. The GPU test
(tests/gpu/test_warm_up_gpu.py) checks that it captures the graphs a first request then replays.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.engine.warm_up import _batch_buckets, _table_widths, warm_up
from lil_sparse.options import POLICY_NAMES, RequestOptions, SparseOptions, StoppingOptions

PROMPT = [5, 9, 13, 2, 7, 11, 3, 8] * 6


def make_engine(model_dir: Path, warm: bool | None, **overrides) -> LLMEngine:
    config = dict(model=str(model_dir), kv_cache_tokens=4096, max_batch_size=6, guardian_workers=0,
                  poison_freed_pages=True, max_num_batched_tokens=64, warm_up=warm)  # fmt: skip
    return LLMEngine.from_config(EngineConfig(**{**config, **overrides}))


def request(policy: str) -> RequestOptions:
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=12, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=32, dense_layers=1),
    )


def test_warm_up_is_off_on_cpu_by_default_and_on_for_cuda():
    assert not EngineConfig(device="cpu").warms_up
    assert EngineConfig(device="cuda").warms_up
    assert EngineConfig(device="cuda", warm_up=False).warms_up is False
    assert EngineConfig(device="cpu", warm_up=True).warms_up
    with pytest.raises(ValueError, match="warm_up: must be True, False or None"):
        EngineConfig(warm_up="yes")  # type: ignore[arg-type]


def test_batch_buckets_cover_every_bucket_the_runner_pads_to():
    assert _batch_buckets(1) == [1]
    assert _batch_buckets(6) == [1, 2, 4, 6]  # 5 and 6 requests pad to the bucket of 8
    assert _batch_buckets(16) == [1, 2, 4, 8, 16]
    assert _batch_buckets(70) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 70]


def test_warm_up_runs_every_round_and_leaves_a_fresh_engine(tiny_model_dir):
    warmed = make_engine(tiny_model_dir, True)
    cold = make_engine(tiny_model_dir, False)
    try:
        report = warmed.warm_up_report
        assert report is not None and cold.warm_up_report is None
        assert report.batch_sizes == (1, 2, 4, 6)
        # Widths up to the 128 pages of the model's 2048-token context (the pool holds 256).
        assert report.widths == (8, 16, 32, 64, 128)
        assert report.selection_widths == ()  # no fused selection on CPU
        assert report.chunked_prompt_tokens == 64 + 16  # one page past the step's token budget
        # every policy at each width, then alone; the batch buckets; the chunked prompt and its mate
        assert report.requests == len(POLICY_NAMES) * (5 + 1) + sum(report.batch_sizes) + 2
        assert report.seconds > 0
        stats = warmed.stats()
        assert (stats.num_running, stats.num_waiting, stats.kv_pages_used) == (0, 0, 0)
        counters = (stats.graph_replays, stats.eager_decodes, stats.ahead_steps, stats.serial_steps)
        assert counters == (0, 0, 0, 0)
        assert not warmed.has_unfinished()
        # The warmed engine answers as a fresh one, policy by policy.
        for policy in POLICY_NAMES:
            (got,) = warmed.generate([PROMPT], [request(policy)])
            (expected,) = cold.generate([PROMPT], [request(policy)])
            assert got.output_token_ids == expected.output_token_ids, policy
    finally:
        warmed.close()
        cold.close()


def test_widths_stop_where_a_request_would_not_fit(tiny_model_dir):
    """A request of ``width`` pages must fit the KV pool (here 1024 tokens: 64 pages per KV
    head) and the context (``max_model_len`` 256: 16 pages)."""
    for overrides, widths in (
        ({"kv_cache_tokens": 1024}, [8, 16, 32, 64]),
        ({"max_model_len": 256}, [8, 16]),
    ):
        engine = make_engine(tiny_model_dir, False, **overrides)
        try:
            assert _table_widths(engine) == widths
        finally:
            engine.close()


def test_warm_up_refuses_an_engine_with_requests(tiny_model_dir):
    engine = make_engine(tiny_model_dir, False)
    try:
        engine.add_request(PROMPT, request("full"))
        with pytest.raises(RuntimeError, match="already holds requests"):
            warm_up(engine)
    finally:
        engine.close()


def test_a_failing_warm_up_request_fails_the_start(tiny_model_dir, monkeypatch):
    """A kernel that cannot run fails the engine's construction, naming the round and the error,
    instead of the first user request."""
    from lil_sparse.engine.model_runner import ModelRunner

    def broken_decode(self, *args, **kwargs):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(ModelRunner, "decode", broken_decode)
    with pytest.raises(RuntimeError, match=r"warm-up \(policies at width 8\) failed: .*no kernel image"):
        make_engine(tiny_model_dir, True)


def test_a_short_context_and_a_small_pool_leave_rounds_out(tiny_model_dir):
    """An engine whose context holds fewer pages than the narrowest table, or whose pool cannot
    hold a chunked prompt, still starts: those rounds are left out, the rest run."""
    engine = make_engine(tiny_model_dir, True, max_model_len=64, max_num_batched_tokens=0)
    try:
        report = engine.warm_up_report
        assert report is not None
        assert report.widths == ()  # 64 tokens: 4 pages, under the 8-page table
        assert report.chunked_prompt_tokens == 0  # the CPU budget of 512 tokens is past the context
        assert report.batch_sizes == (1, 2, 4, 6)
        (got,) = engine.generate([PROMPT[:40]], [request("full")])
        assert len(got.output_token_ids) == 12
    finally:
        engine.close()
