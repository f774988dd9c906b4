"""Overlap scheduling equals the serial engine: the same tokens, text, finish reasons and KV
reports for every policy under staggered arrivals, chunked prompts, stop strings, EOS, length
caps and aborts; Guardian requests run ahead between checks, answer phases serially; the decode
launched ahead can fail without losing a token; the engine chaos and isolation tests pass with it
on."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import test_engine_chaos as chaos_tests
import test_engine_isolation as isolation_tests

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.engine.guardian_driver import GuardianDriver
from lil_sparse.engine.stop_checker import StopChecker
from lil_sparse.events import FinishReason, RequestReport
from lil_sparse.guardian import zlib_compressed_size
from lil_sparse.options import (
    POLICY_NAMES,
    GuardianOptions,
    RequestOptions,
    SamplingOptions,
    SparseOptions,
    StoppingOptions,
)
from server.settings import build_server_config

PAGE_SIZE = 4  # many page boundaries, evictions and selections in short requests
STEP_TOKENS = 24  # a small step budget: prompts take several chunks beside the decode rows
EOS_IDS = frozenset(range(40, 400, 23))  # 16 of the 384 ids end a request that does not ignore EOS


def make_engine(
    model_dir: Path, overlap: bool, guardian_workers: int = 0, selection: str = "exact"
) -> LLMEngine:
    return LLMEngine.from_config(
        EngineConfig(
            selection=selection,
            model=str(model_dir),
            page_size=PAGE_SIZE,
            kv_cache_tokens=4096,
            max_batch_size=8,
            max_num_batched_tokens=STEP_TOKENS,
            guardian_workers=guardian_workers,
            poison_freed_pages=True,  # a step that reads a freed page turns its logits to NaN
            overlap_scheduling=overlap,
        )
    )


@pytest.fixture
def overlap_engine(tiny_model_dir: Path) -> Iterator[LLMEngine]:
    """The conftest ``engine`` with overlap scheduling on."""
    eng = LLMEngine.from_config(
        EngineConfig(
            model=str(tiny_model_dir),
            kv_cache_tokens=4096,
            max_batch_size=8,
            guardian_workers=0,
            poison_freed_pages=True,
            overlap_scheduling=True,
        )
    )
    yield eng
    eng.close()


@dataclass
class Arrival:
    step: int
    request_id: str
    prompt: list[int]
    options: RequestOptions


@dataclass
class Workload:
    arrivals: list[Arrival]
    aborts: dict[int, list[str]] = field(default_factory=dict)  # step -> requests aborted before it


@dataclass
class Outcome:
    reports: dict[str, RequestReport] = field(default_factory=dict)
    streamed: dict[str, tuple[list[int], str]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)


def workload(policy: str, seed: int, requests: int = 14) -> Workload:
    """Requests of ``policy`` (and a few of every other) arriving over the first steps, with
    prompts of 3..60 tokens, greedy and seeded sampling, stop strings, EOS and length caps."""
    rng = random.Random(seed)
    arrivals = []
    for index in range(requests):
        this_policy = policy if index % 3 else POLICY_NAMES[index % len(POLICY_NAMES)]
        sampling = [SamplingOptions(), SamplingOptions(temperature=0.9, top_k=20, seed=index)][index % 2]
        options = RequestOptions(
            sampling=sampling,
            stopping=StoppingOptions(
                max_new_tokens=rng.choice([1, 2, 5, 9, 17, 24]),
                ignore_eos=index % 4 == 0,
                stop_strings=("e", "an") if index % 5 == 1 else (),
            ),
            sparse=SparseOptions(
                policy=this_policy,
                budget_tokens=rng.choice([8, 12, 20]),
                sink_tokens=rng.choice([0, 4]),
                recent_tokens=4,
                dense_layers=rng.choice([0, 1]),
            ),
        )
        prompt = [rng.randrange(3, 384) for _ in range(rng.randint(3, 60))]
        arrivals.append(Arrival(rng.randint(0, 12), f"r{index}", prompt, options))
    aborts = {rng.randint(1, 14): [f"r{rng.randrange(requests)}"] for _ in range(3)}
    return Workload(sorted(arrivals, key=lambda a: a.step), aborts)


def run(engine: LLMEngine, work: Workload) -> Outcome:
    engine.stop_checker = StopChecker(EOS_IDS)  # EOS that a random tiny model really samples
    outcome = Outcome()
    pending = list(work.arrivals)
    step = 0
    while pending or engine.has_unfinished():
        while pending and pending[0].step <= step:
            arrival = pending.pop(0)
            engine.add_request(arrival.prompt, arrival.options, request_id=arrival.request_id)
            outcome.streamed[arrival.request_id] = ([], "")
        for request_id in work.aborts.get(step, []):
            engine.abort(request_id)
        for event in engine.step():
            tokens, text = outcome.streamed[event.request_id]
            outcome.streamed[event.request_id] = (tokens + list(event.token_ids), text + event.text_delta)
            if event.report is not None:
                outcome.reports[event.request_id] = event.report
        step += 1
    outcome.stats = engine.overlap_stats()
    assert engine.pool.num_used == 0 and engine.scheduler.reserved_pages == 0
    return outcome


def comparable(report: RequestReport) -> tuple[object, ...]:
    """Everything in a report but host-clock times and Guardian CPU seconds."""
    checks = [(c.generated_tokens, c.compressed_bytes) for c in report.guardian.checks]
    return (
        report.finish_reason,
        report.output_token_ids,
        report.output_text,
        report.prompt_tokens,
        report.completion_tokens,
        report.kv.attended_pages_per_step,
        report.kv.peak_pages,
        len(report.timings.inter_token_seconds),
        report.error,
        checks,
        report.guardian.stop_step,
        report.guardian.applied_at_step,
        report.kv.selection_skipped_steps,
    )


def assert_same(serial: Outcome, overlapped: Outcome) -> None:
    assert serial.reports.keys() == overlapped.reports.keys()
    for request_id, report in serial.reports.items():
        assert comparable(overlapped.reports[request_id]) == comparable(report), request_id
        tokens, text = overlapped.streamed[request_id]
        assert tokens == report.output_token_ids and text == report.output_text


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_overlap_equals_the_serial_engine(tiny_model_dir: Path, policy: str) -> None:
    serial_engine, overlap_engine = make_engine(tiny_model_dir, False), make_engine(tiny_model_dir, True)
    reasons: set[FinishReason] = set()
    for seed in range(2):
        work = workload(policy, seed)
        serial = run(serial_engine, work)
        overlapped = run(overlap_engine, work)
        assert_same(serial, overlapped)
        reasons |= {r.finish_reason for r in serial.reports.values()}
        assert serial.stats["ahead_steps"] == 0
        assert overlapped.stats["serial_steps"] == overlapped.stats["catch_up_decodes"] == 0
        # Every sampling step launched the next decode ahead: as many as the serial run had.
        assert overlapped.stats["ahead_steps"] == serial.stats["serial_steps"] > 0
    serial_engine.close()
    overlap_engine.close()
    assert {FinishReason.LENGTH, FinishReason.EOS, FinishReason.STOP_STRING, FinishReason.ABORTED} <= reasons


@pytest.mark.parametrize("policy", ["quest", "infllm"])
def test_overlap_equals_serial_when_the_selection_gate_attends_densely(
    tiny_model_dir: Path, policy: str
) -> None:
    """Under ``selection="when_faster"`` (on the tiny model selection never pays, so every over-budget
    step attends densely) the reports' gate counts equal the serial engine's: a row run ahead and
    dropped at its request's finish counts no skip."""
    serial_engine = make_engine(tiny_model_dir, False, selection="when_faster")
    overlap_engine = make_engine(tiny_model_dir, True, selection="when_faster")
    work = workload(policy, seed=5)
    serial, overlapped = run(serial_engine, work), run(overlap_engine, work)
    assert_same(serial, overlapped)
    assert sum(r.kv.selection_skipped_steps for r in serial.reports.values()) > 0
    assert overlapped.stats["ahead_steps"] == serial.stats["serial_steps"] > 0
    serial_engine.close()
    overlap_engine.close()


def guardian_workload() -> Workload:
    """Plain requests beside a Guardian request (stops at its second check) and an answer-phase
    one (its answer phase forces the answer prompt's tokens)."""
    plain = workload("quest", seed=3, requests=6)
    guardian = GuardianOptions(enabled=True, interval_tokens=5, threshold_bytes=10**9)
    options = [
        RequestOptions(stopping=StoppingOptions(max_new_tokens=30, ignore_eos=True), guardian=guardian),
        RequestOptions(
            stopping=StoppingOptions(max_new_tokens=60, ignore_eos=True),
            guardian=GuardianOptions(
                enabled=True, interval_tokens=5, threshold_bytes=10**9, action="answer", answer_max_tokens=4
            ),
        ),
    ]
    prompt = plain.arrivals[0].prompt
    guarded = [Arrival(2 * index, f"g{index}", prompt, o) for index, o in enumerate(options)]
    return Workload(sorted(plain.arrivals + guarded, key=lambda a: a.step), {})


def test_guardian_requests_run_ahead_between_checks_with_equal_outputs(tiny_model_dir: Path) -> None:
    """A Guardian request runs ahead whenever its token cannot pause it; a stop-action "answer"
    request (lag bound 0) never at a token where a check is due, and never in its answer phase
    (the host replaces its sampled tokens). Outputs equal the serial engine's."""
    serial_engine, overlap_engine = make_engine(tiny_model_dir, False), make_engine(tiny_model_dir, True)
    launched: list[dict[str, int]] = []  # per launch: request -> its token count once handled
    real_launch = overlap_engine.overlap.launch

    def launch(seqs, token_ids) -> None:
        launched.append({s.request_id: s.num_output_tokens + 1 for s in seqs})
        real_launch(seqs, token_ids)

    overlap_engine.overlap.launch = launch  # type: ignore[method-assign]
    work = guardian_workload()
    serial, overlapped = run(serial_engine, work), run(overlap_engine, work)
    assert_same(serial, overlapped)
    assert serial.reports["g0"].finish_reason == FinishReason.EARLY_STOP
    answer = serial.reports["g1"].guardian
    assert answer.answer_tokens == 4  # the answer phase ran
    g0 = [counts["g0"] for counts in launched if "g0" in counts]
    g1 = [counts["g1"] for counts in launched if "g1" in counts]
    assert g0 and g1  # both Guardian requests ran ahead between checks
    assert all(count % 5 and count <= answer.applied_at_step for count in g1)
    assert overlapped.stats["serial_steps"] > 0 and overlapped.stats["ahead_steps"] == len(launched)
    serial_engine.close()
    overlap_engine.close()


def test_a_request_paused_for_guardian_decodes_in_a_catch_up_call(tiny_model_dir: Path) -> None:
    """A Guardian request that waits for a verdict is not sampled, so its batch mates run ahead;
    when it resumes, it is a decode row the ahead step did not run: a second decode call."""
    gate = threading.Event()
    started = threading.Event()

    def gated_size(data: bytes) -> int:
        started.set()
        gate.wait(timeout=30)
        return zlib_compressed_size(data)

    guarded = RequestOptions(
        stopping=StoppingOptions(max_new_tokens=24, ignore_eos=True),
        guardian=GuardianOptions(enabled=True, interval_tokens=5, threshold_bytes=0),  # never stops
    )
    plain = RequestOptions(stopping=StoppingOptions(max_new_tokens=30, ignore_eos=True))
    prompts = [[5 + i for i in range(20)], [7 + i for i in range(12)], [9 + i for i in range(16)]]
    options = [guarded, plain, plain]
    serial_engine = make_engine(tiny_model_dir, False)
    expected = serial_engine.generate(prompts, options)
    serial_engine.close()
    engine = make_engine(tiny_model_dir, True)
    engine.guardian.shutdown()
    engine.guardian = GuardianDriver(workers=2, max_lag_steps=2, compressed_size=gated_size)
    ids = [engine.add_request(p, o) for p, o in zip(prompts, options, strict=True)]
    reports: dict[str, RequestReport] = {}

    def step() -> None:
        reports.update({e.request_id: e.report for e in engine.step() if e.report is not None})

    while not started.is_set():
        step()
    for _ in range(6):  # the guarded request decodes 2 tokens past its check, then pauses
        step()
    assert engine.guardian.lagging(engine._sequences[ids[0]])
    ahead = engine.overlap_stats()["ahead_steps"]
    step()
    assert engine.overlap_stats()["ahead_steps"] == ahead + 1  # its batch mates ran ahead
    gate.set()
    assert engine.guardian.pool.wait(ids[0], timeout=30)
    step()  # the verdict: the guarded request decodes beside the rows run ahead
    assert engine.overlap_stats()["catch_up_decodes"] == 1
    while engine.has_unfinished():
        step()
    for request_id, report in zip(ids, expected, strict=True):
        assert comparable(reports[request_id])[:9] == comparable(report)[:9]
    assert engine.pool.num_used == 0
    engine.close()


def test_a_request_stopping_while_its_check_is_pending_drops_its_row_run_ahead(tiny_model_dir: Path) -> None:
    """A Guardian request that reaches its length cap while a check is held runs ahead at that
    token (nothing could pause it), then waits for the verdict and finishes: its row run ahead is
    dropped, not failed, and its report equals the serial engine's."""
    gate = threading.Event()

    def gated_size(data: bytes) -> int:
        gate.wait(timeout=30)
        return zlib_compressed_size(data)

    guarded = RequestOptions(
        stopping=StoppingOptions(max_new_tokens=8, ignore_eos=True),
        guardian=GuardianOptions(enabled=True, interval_tokens=5, threshold_bytes=0),  # never stops
    )
    prompt = [5 + i for i in range(20)]
    serial_engine = make_engine(tiny_model_dir, False)
    (expected,) = serial_engine.generate([prompt], [guarded])
    serial_engine.close()
    engine = make_engine(tiny_model_dir, True)
    engine.guardian.shutdown()
    engine.guardian = GuardianDriver(workers=2, max_lag_steps=100, compressed_size=gated_size)
    request_id = engine.add_request(prompt, guarded)
    reports: dict[str, RequestReport] = {}
    for _ in range(12):  # prefill + 7 decode steps: the 8th token lands with the check still held
        reports.update({e.request_id: e.report for e in engine.step() if e.report is not None})
    assert request_id in engine._finishing and not reports
    assert engine.overlap_stats()["ahead_steps"] >= 7
    gate.set()
    assert engine.guardian.pool.wait(request_id, timeout=30)
    while engine.has_unfinished():
        reports.update({e.request_id: e.report for e in engine.step() if e.report is not None})
    report = reports[request_id]
    assert report.finish_reason == FinishReason.LENGTH and not report.error
    assert comparable(report)[:9] == comparable(expected)[:9]
    assert engine.pool.num_used == 0
    engine.close()


@pytest.mark.parametrize("short", [False, True])
def test_a_failed_launch_ahead_keeps_the_steps_tokens_and_fails_its_requests(
    overlap_engine: LLMEngine, monkeypatch: pytest.MonkeyPatch, short: bool
) -> None:
    """The prompts prefill in one step; the third decode call is a launch ahead after the third
    tokens were sampled: they are handled first (a request they finish ends normally), then the
    others fail with ``model``."""
    engine = overlap_engine
    prompt = [3 + i for i in range(18)]
    options = [RequestOptions(stopping=StoppingOptions(max_new_tokens=12, ignore_eos=True))] * 3
    if short:  # its third token is its last: it finishes in the step whose launch fails
        options[1] = RequestOptions(stopping=StoppingOptions(max_new_tokens=3, ignore_eos=True))
    solo = engine.generate([prompt] * 3, options)
    real = engine.runner.decode
    calls = []

    def decode(seqs, **kwargs):
        calls.append(len(seqs))
        if len(calls) == 3:
            raise isolation_tests.InjectedFault("model")
        return real(seqs, **kwargs)

    monkeypatch.setattr(engine.runner, "decode", decode)
    ids = [engine.add_request(prompt, o) for o in options]
    run_ = isolation_tests.Run()
    isolation_tests.run_until_done(engine, run_)
    for index, request_id in enumerate(ids):
        report = run_.reports[request_id]
        assert run_.tokens[request_id] == report.output_token_ids
        if short and index == 1:
            assert report.finish_reason == FinishReason.LENGTH
            assert report.output_token_ids == solo[1].output_token_ids
            assert report.kv.attended_pages_per_step == solo[1].kv.attended_pages_per_step
        else:
            assert report.finish_reason == FinishReason.ERROR and report.error.startswith("model:")
            assert report.output_token_ids == solo[index].output_token_ids[:3]
    assert engine.pool.num_used == 0 and engine.scheduler.reserved_pages == 0
    monkeypatch.undo()
    assert [r.output_token_ids for r in engine.generate([prompt] * 3, options)] == [
        r.output_token_ids for r in solo
    ]


def test_engine_chaos_with_overlap(overlap_engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    chaos_tests.test_500_random_aborts_and_faults_leave_nothing_behind(overlap_engine, monkeypatch)
    assert overlap_engine.overlap_stats()["ahead_steps"] > 0


@pytest.mark.parametrize("stage", list(isolation_tests.STAGES))
def test_a_fault_in_one_stage_fails_that_request_alone_with_overlap(
    overlap_engine: LLMEngine, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    isolation_tests.test_a_fault_in_one_requests_stage_fails_that_request_alone(
        overlap_engine, monkeypatch, stage, victim_index=2
    )
    assert overlap_engine.overlap_stats()["ahead_steps"] > 0


def test_overlap_setting_resolves_and_validates(tiny_model_dir: Path) -> None:
    assert EngineConfig().overlaps is False  # CPU
    assert EngineConfig(device="cuda").overlaps is True
    assert EngineConfig(device="cuda", chunked_prefill=False).overlaps is False
    assert EngineConfig(overlap_scheduling=True).overlaps is True
    with pytest.raises(ValueError, match=r"^overlap_scheduling: needs chunked_prefill"):
        EngineConfig(overlap_scheduling=True, chunked_prefill=False)
    with pytest.raises(ValueError, match=r"^overlap_scheduling: must be True, False or None"):
        EngineConfig(overlap_scheduling="yes")  # type: ignore[arg-type]
    flags = {"model": str(tiny_model_dir), "overlap_scheduling": "on"}
    assert build_server_config(flags, {}).engine_overlap is True
    env = {"LIL_SPARSE_MODEL": str(tiny_model_dir), "LIL_SPARSE_OVERLAP_SCHEDULING": "off"}
    assert build_server_config({}, env).engine_overlap is False
    with pytest.raises(ValueError, match=r"^overlap_scheduling: must be one of auto, on, off"):
        build_server_config({**flags, "overlap_scheduling": "sometimes"}, {})
