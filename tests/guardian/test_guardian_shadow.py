"""Shadow mode: Guardian checks and records where it would have stopped, and never stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.engine.guardian_driver import GuardianDriver
from lil_sparse.events import FinishReason
from lil_sparse.guardian import Guardian, zlib_compressed_size
from lil_sparse.options import GuardianOptions, RequestOptions, StoppingOptions
from lil_sparse.testing.tiny_model import build_tiny_model

PROMPT = "Please reason step by step, and put your final answer within \\boxed{}. "


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMEngine]:
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-shadow"), architecture="llama")
    eng = LLMEngine.from_config(
        EngineConfig(model=str(folder), kv_cache_tokens=4096, max_batch_size=8, guardian_workers=0)
    )
    yield eng
    eng.close()


def request(guardian: bool, shadow: bool, threshold: int = 10**9, max_new: int = 60) -> RequestOptions:
    # A threshold of 10^9 bytes makes every check after the first say stop.
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=max_new, ignore_eos=True),
        guardian=GuardianOptions(
            enabled=guardian, interval_tokens=10, threshold_bytes=threshold, shadow=shadow
        ),
    )


def test_shadow_records_the_stop_and_runs_to_the_end(engine: LLMEngine) -> None:
    prompt_ids = engine.tokenizer.encode(PROMPT)
    off, stopping, shadow = engine.generate(
        [prompt_ids] * 3, [request(False, False), request(True, False), request(True, True)]
    )
    # The stopping twin ends at the second check; the shadow run goes on to max_new_tokens.
    assert stopping.finish_reason == FinishReason.EARLY_STOP and stopping.completion_tokens == 20
    assert stopping.guardian.shadow is False and stopping.guardian.applied_at_step == 20
    assert shadow.finish_reason == FinishReason.LENGTH and shadow.completion_tokens == 60
    assert shadow.guardian.enabled is True and shadow.guardian.shadow is True
    assert shadow.guardian.stop_step == 20  # where it would have stopped
    assert shadow.guardian.applied_at_step is None
    # Checks go on after the would-stop check: tokens 10..50 (the length stop at 60 comes first).
    assert [c.generated_tokens for c in shadow.guardian.checks] == [10, 20, 30, 40, 50]
    assert [c.stop for c in shadow.guardian.checks] == [False, True, True, True, True]
    # Greedy: shadow mode changes no token, and the stopping twin is its prefix.
    assert shadow.output_token_ids == off.output_token_ids
    assert stopping.output_token_ids == shadow.output_token_ids[:20]
    assert [c.compressed_bytes for c in stopping.guardian.checks] == [
        c.compressed_bytes for c in shadow.guardian.checks[:2]
    ]


def test_shadow_without_a_stop_verdict_has_no_stop_step(engine: LLMEngine) -> None:
    report = engine.generate([engine.tokenizer.encode(PROMPT)], [request(True, True, threshold=0)])[0]
    assert report.finish_reason == FinishReason.LENGTH
    assert report.guardian.shadow is True and report.guardian.stop_step is None
    assert len(report.guardian.checks) == 5


def test_shadow_on_a_thread_pool_never_stops_and_keeps_checks_in_flight(engine: LLMEngine) -> None:
    gate = threading.Event()

    def gated_size(data: bytes) -> int:
        gate.wait(timeout=30)
        return zlib_compressed_size(data)

    engine.guardian.shutdown()
    # No lag bound within the request: every check is still in flight when it ends.
    engine.guardian = GuardianDriver(workers=2, max_lag_steps=1000, compressed_size=gated_size)
    threading.Timer(0.2, gate.set).start()  # opens while release() waits for the checks
    try:
        report = engine.generate([engine.tokenizer.encode(PROMPT)], [request(True, True, max_new=45)])[0]
    finally:
        gate.set()
        engine.guardian.shutdown()
        engine.guardian = GuardianDriver(workers=0, max_lag_steps=engine.config.guardian_max_lag_steps)
    assert report.finish_reason == FinishReason.LENGTH and report.completion_tokens == 45
    assert report.guardian.stop_step == 20 and report.guardian.applied_at_step is None
    assert [c.generated_tokens for c in report.guardian.checks] == [10, 20, 30, 40]


def test_shadow_holds_no_token_behind_a_pending_check_and_pauses_only_at_the_lag_bound(
    engine: LLMEngine,
) -> None:
    gate = threading.Event()
    started = threading.Event()

    def gated_size(data: bytes) -> int:
        started.set()
        gate.wait(timeout=30)
        return zlib_compressed_size(data)

    prompt_ids = engine.tokenizer.encode(PROMPT)
    off = engine.generate([prompt_ids], [request(False, False, max_new=40)])[0]
    engine.guardian.shutdown()
    engine.guardian = GuardianDriver(workers=2, max_lag_steps=4, compressed_size=gated_size)
    try:
        request_id = engine.add_request(prompt_ids, request(True, True, max_new=40))
        streamed: list[int] = []
        text = ""
        reports = []

        def step() -> None:
            nonlocal text
            for event in engine.step():
                streamed.extend(event.token_ids)
                text += event.text_delta
                if event.report is not None:
                    reports.append(event.report)

        while len(streamed) < 10:
            step()
        assert started.wait(timeout=30)  # the check after token 10 runs, held by the gate
        seq = engine._sequences[request_id]
        for _ in range(8):
            step()
        # Every decoded token was streamed in its own step (nothing held back behind the check);
        # the request paused once it ran max_lag_steps tokens past the pending check.
        assert seq.num_output_tokens == 14 and streamed == seq.output_token_ids
        assert engine.guardian.gate(request_id) is None and engine.guardian.lagging(seq)
        gate.set()
        while engine.has_unfinished():
            step()
    finally:
        gate.set()
        engine.guardian.shutdown()
        engine.guardian = GuardianDriver(workers=0, max_lag_steps=engine.config.guardian_max_lag_steps)
    report = reports[0]
    assert report.finish_reason == FinishReason.LENGTH and report.completion_tokens == 40
    assert streamed == report.output_token_ids == off.output_token_ids
    assert text == report.output_text == off.output_text
    assert report.guardian.stop_step == 20 and report.guardian.applied_at_step is None
    assert [c.generated_tokens for c in report.guardian.checks] == [10, 20, 30]
    assert engine.pool.num_used == 0


def test_guardian_report_carries_the_shadow_flag_and_options_validate() -> None:
    options = GuardianOptions(enabled=True, interval_tokens=1, threshold_bytes=10**9, shadow=True)
    guardian = Guardian(options, b"p")
    guardian.check(b"p" + b"a" * 100, 1)
    assert guardian.check(b"p" + b"a" * 101, 2).stop is True
    report = guardian.report()
    assert report.shadow is True and report.stop_step == 2
    assert GuardianOptions().shadow is False
    with pytest.raises(ValueError, match=r"^shadow: must be true or false"):
        GuardianOptions(shadow="yes")  # type: ignore[arg-type]
