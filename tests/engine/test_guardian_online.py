"""Guardian inside the engine: online stops equal offline replay, and checks never block decoding."""

from __future__ import annotations

import threading

from lil_sparse.engine import LLMEngine
from lil_sparse.engine.guardian_driver import GuardianDriver
from lil_sparse.events import FinishReason
from lil_sparse.guardian import replay_tokens, zlib_compressed_size
from lil_sparse.options import GuardianOptions, RequestOptions, SparseOptions, StoppingOptions

PROMPT = "Please reason step by step, and put your final answer within \\boxed{}. " * 2


def guarded(
    policy: str, interval: int, threshold: int, max_new: int = 300, mode: str = "full"
) -> RequestOptions:
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=max_new, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=32, dense_layers=1),
        guardian=GuardianOptions(
            enabled=True, interval_tokens=interval, threshold_bytes=threshold, mode=mode
        ),
    )


def test_online_stop_equals_offline_replay(engine: LLMEngine) -> None:
    prompt_ids = engine.tokenizer.encode(PROMPT)
    prompt_text = engine.tokenizer.decode(prompt_ids, skip_special_tokens=False)
    stopped = 0
    for policy in ("full", "sink", "quest"):
        for mode in ("full", "incremental"):
            options = guarded(policy, interval=20, threshold=20, mode=mode)
            report = engine.generate([prompt_ids], [options])[0]
            replayed = replay_tokens(
                options.guardian, prompt_text, report.output_token_ids, engine.tokenizer.decode
            )
            assert [c.compressed_bytes for c in replayed.checks] == [
                c.compressed_bytes for c in report.guardian.checks
            ]
            assert replayed.stop_step == report.guardian.stop_step
            if report.finish_reason == FinishReason.EARLY_STOP:
                stopped += 1
                # Inline checks: the stop lands exactly at the check that called for it.
                assert (
                    report.guardian.applied_at_step == report.guardian.stop_step == report.completion_tokens
                )
    # A random tiny model loops quickly, so Guardian must have fired somewhere.
    assert stopped > 0


def test_a_huge_threshold_stops_at_the_second_check_and_zero_never_stops(engine: LLMEngine) -> None:
    prompt_ids = engine.tokenizer.encode(PROMPT)
    eager = engine.generate([prompt_ids], [guarded("full", interval=10, threshold=10**9, max_new=100)])[0]
    assert eager.finish_reason == FinishReason.EARLY_STOP and eager.completion_tokens == 20
    never = engine.generate([prompt_ids], [guarded("full", interval=10, threshold=0, max_new=60)])[0]
    assert never.finish_reason == FinishReason.LENGTH
    # Checks after tokens 10..50; the length stop at 60 comes first, so no check is made there.
    assert len(never.guardian.checks) == 5 and never.guardian.stop_step is None


def test_a_lagging_check_pauses_only_its_request_and_no_token_passes_the_stop(engine: LLMEngine) -> None:
    gate = threading.Event()
    started = threading.Event()

    def gated_size(data: bytes) -> int:
        started.set()
        gate.wait(timeout=30)
        return zlib_compressed_size(data)

    engine.guardian.shutdown()
    engine.guardian = GuardianDriver(workers=2, max_lag_steps=4, compressed_size=gated_size)
    prompt_ids = engine.tokenizer.encode(PROMPT)
    plain = RequestOptions(stopping=StoppingOptions(max_new_tokens=30, ignore_eos=True))
    solo = engine.generate([prompt_ids[:30]], [plain])[0].output_token_ids
    guarded_id = engine.add_request(prompt_ids, guarded("full", interval=5, threshold=10**9, max_new=40))
    plain_id = engine.add_request(prompt_ids[:30], plain)
    streamed: dict[str, list[int]] = {guarded_id: [], plain_id: []}
    texts: dict[str, str] = {guarded_id: "", plain_id: ""}
    reports = {}

    def step() -> None:
        for event in engine.step():
            streamed[event.request_id] += event.token_ids
            texts[event.request_id] += event.text_delta
            if event.report is not None:
                reports[event.request_id] = event.report

    while len(streamed[guarded_id]) < 5:
        step()
    assert started.wait(timeout=30)  # the first check (after token 5) is running, held by the gate
    seq = engine._sequences[guarded_id]
    # Up to max_lag_steps tokens are decoded past the pending check, but none is released.
    for _ in range(8):
        step()
    assert seq.num_output_tokens == 9 and streamed[guarded_id] == seq.output_token_ids[:5]
    # The lagging request is paused; its batch mate went on every step.
    assert len(streamed[plain_id]) == 5 + 8 and engine.guardian.pool.pending(guarded_id) == 1
    gate.set()
    while engine.has_unfinished():
        step()
    report = reports[guarded_id]
    assert report.finish_reason == FinishReason.EARLY_STOP
    # The second check always says stop with this threshold: exactly 10 tokens, none after it.
    assert report.guardian.stop_step == report.guardian.applied_at_step == 10 == report.completion_tokens
    assert streamed[guarded_id] == report.output_token_ids
    assert texts[guarded_id] == report.output_text == engine.tokenizer.decode(report.output_token_ids)
    assert [c.generated_tokens for c in report.guardian.checks] == [5, 10]
    assert streamed[plain_id] == reports[plain_id].output_token_ids == solo
    assert engine.pool.num_used == 0
