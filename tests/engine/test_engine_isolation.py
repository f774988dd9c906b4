"""One request can never hurt another: a fault injected into one request's handling, in every
stage of the step, fails that request alone; the others get exactly their solo tokens, every
page comes back, and the engine serves the next request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from lil_sparse.engine import LLMEngine
from lil_sparse.engine.guardian_driver import GuardianDriver
from lil_sparse.events import FinishReason, RequestReport
from lil_sparse.guardian import zlib_compressed_size
from lil_sparse.options import (
    GuardianOptions,
    RequestOptions,
    SamplingOptions,
    SparseOptions,
    StoppingOptions,
)
from lil_sparse.sampling import Sampler

PROMPT = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. "
FAULT_AT = 3  # the victim fails while handling its 4th token (after 3 were streamed)


class InjectedFault(RuntimeError):
    pass


def request_options(index: int, guardian: bool = False) -> RequestOptions:
    sampling = [
        SamplingOptions(),
        SamplingOptions(temperature=0.8, seed=42),
        SamplingOptions(temperature=1.0, top_k=5, seed=7),
        SamplingOptions(temperature=0.7, top_p=0.9, seed=3),
    ][index % 4]
    policy = ["full", "sink", "quest", "h2o", "infllm"][index % 5]
    return RequestOptions(
        sampling=sampling,
        stopping=StoppingOptions(max_new_tokens=12 + index, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=32, dense_layers=1),
        guardian=GuardianOptions(enabled=guardian, interval_tokens=2, threshold_bytes=0),
    )


@dataclass
class Run:
    reports: dict[str, RequestReport] = field(default_factory=dict)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)


def run_until_done(engine: LLMEngine, run: Run) -> None:
    while engine.has_unfinished():
        for event in engine.step():
            run.tokens.setdefault(event.request_id, []).extend(event.token_ids)
            run.text[event.request_id] = run.text.get(event.request_id, "") + event.text_delta
            if event.report is not None:
                run.reports[event.request_id] = event.report


def solo_tokens(
    engine: LLMEngine, prompts: list[list[int]], options: list[RequestOptions]
) -> list[list[int]]:
    return [engine.generate([p], [o])[0].output_token_ids for p, o in zip(prompts, options, strict=True)]


def victim_seq_fails(engine: LLMEngine, victim: str) -> Callable[[], bool]:
    """True when the victim is about to handle its (FAULT_AT + 1)-th token."""

    def due() -> bool:
        seq = engine._sequences.get(victim)
        return seq is not None and seq.num_output_tokens > FAULT_AT

    return due


def inject_sampling_params(engine: LLMEngine, victim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A value that slipped past validation: float32 packing overflows for this row only.
    sampling = engine._sequences[victim].options.sampling
    object.__setattr__(sampling, "temperature", 1e39)


def inject_sampler(engine: LLMEngine, victim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = engine._sequences[victim].options.sampling.seed
    real = engine.sampler.sample

    def sample(logits: torch.Tensor, params, positions: torch.Tensor):
        if bool((params.seed == seed).any()):
            raise InjectedFault("sampler")
        return real(logits, params, positions)

    monkeypatch.setattr(engine.sampler, "sample", sample)


def inject_detokenizer(engine: LLMEngine, victim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    due = victim_seq_fails(engine, victim)

    def push_then_fail(token_ids, real=None):
        if due():
            raise InjectedFault("detokenizer")
        return real(token_ids)

    real_admit = engine._admit

    def admit(seq):  # the victim's detokenizer exists once it is admitted
        real_admit(seq)
        if seq.request_id == victim:
            detokenizer = engine._outputs[victim].detokenizer
            real_push = detokenizer.push
            monkeypatch.setattr(detokenizer, "push", lambda ids: push_then_fail(ids, real_push))

    monkeypatch.setattr(engine, "_admit", admit)


def inject_stop_checker(engine: LLMEngine, victim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine.stop_checker.check

    def check(seq, token, stop_string_hit):
        if seq.request_id == victim and seq.num_output_tokens > FAULT_AT:
            raise InjectedFault("stop checker")
        return real(seq, token, stop_string_hit)

    monkeypatch.setattr(engine.stop_checker, "check", check)


def inject_guardian_submit(engine: LLMEngine, victim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine.guardian.after_token

    def after_token(seq, text):
        if seq.request_id == victim and seq.num_output_tokens > FAULT_AT:
            raise InjectedFault("guardian")
        return real(seq, text)

    monkeypatch.setattr(engine.guardian, "after_token", after_token)


def inject_admission(engine: LLMEngine, victim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine.pages.admit

    def admit(seq):
        if seq.request_id == victim:
            real(seq)  # pages taken, then the failure: they must come back
            raise InjectedFault("admission")
        return real(seq)

    monkeypatch.setattr(engine.pages, "admit", admit)


STAGES = {
    "sampling params": inject_sampling_params,
    "sampler": inject_sampler,
    "detokenizer": inject_detokenizer,
    "stop checker": inject_stop_checker,
    "guardian": inject_guardian_submit,
    "admission": inject_admission,
}


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("victim_index", [0, 2])
def test_a_fault_in_one_requests_stage_fails_that_request_alone(
    engine: LLMEngine, monkeypatch: pytest.MonkeyPatch, stage: str, victim_index: int
) -> None:
    base = engine.tokenizer.encode(PROMPT)
    prompts = [base[: 20 + 7 * i] for i in range(4)]
    options = [request_options(i, guardian=(i == victim_index and stage == "guardian")) for i in range(4)]
    solo = solo_tokens(engine, prompts, options)
    ids = [engine.add_request(p, o) for p, o in zip(prompts, options, strict=True)]
    victim = ids[victim_index]
    STAGES[stage](engine, victim, monkeypatch)
    run = Run()
    run_until_done(engine, run)
    report = run.reports[victim]
    assert report.finish_reason == FinishReason.ERROR
    expected_stage = {"sampling params": "sampling", "sampler": "sampling", "admission": "admission"}
    assert report.error.split(":")[0] == expected_stage.get(stage, "token")
    # Sampling and admission fail at the victim's first token; the others after FAULT_AT tokens.
    assert report.completion_tokens == (0 if stage in expected_stage else FAULT_AT)
    # What the victim's client got is exactly its report: a prefix of its solo tokens.
    assert run.tokens.get(victim, []) == report.output_token_ids
    assert report.output_token_ids == solo[victim_index][: report.completion_tokens]
    assert run.text.get(victim, "") == report.output_text
    for index, request_id in enumerate(ids):
        if request_id != victim:
            assert run.reports[request_id].finish_reason == FinishReason.LENGTH
            assert run.tokens[request_id] == run.reports[request_id].output_token_ids == solo[index]
    assert engine.pool.num_used == 0 and engine.scheduler.reserved_pages == 0
    monkeypatch.undo()
    assert engine.generate([prompts[1]], [options[1]])[0].output_token_ids == solo[1]


def test_a_failing_guardian_check_fails_only_its_request(engine: LLMEngine) -> None:
    marker = "\u2603"  # only the victim's prompt contains it

    def compressed_size(data: bytes) -> int:
        if marker.encode() in data:
            raise InjectedFault("check")
        return zlib_compressed_size(data)

    engine.guardian.shutdown()
    engine.guardian = GuardianDriver(workers=2, max_lag_steps=2, compressed_size=compressed_size)
    base = engine.tokenizer.encode(PROMPT)
    guarded = request_options(1, guardian=True)
    plain = [request_options(0), request_options(3)]
    solo = solo_tokens(engine, [base, base[:30]], plain)
    victim = engine.add_request(engine.tokenizer.encode(marker + PROMPT), guarded)
    others = [engine.add_request(p, o) for p, o in zip([base, base[:30]], plain, strict=True)]
    run = Run()
    run_until_done(engine, run)
    report = run.reports[victim]
    assert report.finish_reason == FinishReason.ERROR and report.error.startswith("guardian:")
    assert report.completion_tokens <= 2  # nothing after the failed check reached the client
    assert run.tokens.get(victim, []) == report.output_token_ids
    assert [run.reports[i].output_token_ids for i in others] == solo
    assert engine.pool.num_used == 0


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_a_failing_model_forward_fails_the_step_and_the_engine_goes_on(
    engine: LLMEngine, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    base = engine.tokenizer.encode(PROMPT)
    options = [request_options(i) for i in range(3)]
    solo = solo_tokens(engine, [base] * 3, options)
    ids = [engine.add_request(base, o) for o in options]
    real = getattr(engine.runner, phase)
    calls = []

    def forward(seqs):
        calls.append(len(seqs))
        if len(calls) == (1 if phase == "prefill" else 3):
            raise InjectedFault("model")
        return real(seqs)

    monkeypatch.setattr(engine.runner, phase, forward)
    run = Run()
    run_until_done(engine, run)
    for request_id in ids:
        report = run.reports[request_id]
        assert report.finish_reason == FinishReason.ERROR and report.error.startswith("model:")
        # Decode fails on its 3rd step: the prefill token and two decoded ones were streamed.
        assert report.completion_tokens == (0 if phase == "prefill" else 3)
        assert run.tokens.get(request_id, []) == report.output_token_ids
    assert engine.pool.num_used == 0 and engine.scheduler.reserved_pages == 0
    monkeypatch.undo()
    assert [r.output_token_ids for r in engine.generate([base] * 3, options)] == solo


@pytest.mark.parametrize("where", ["write_pages", "reset_pages"])
@pytest.mark.parametrize("path", ["admit", "decode"])
def test_a_failure_between_allocation_and_accounting_leaks_no_page(
    engine: LLMEngine, monkeypatch: pytest.MonkeyPatch, where: str, path: str
) -> None:
    base = engine.tokenizer.encode(PROMPT)[:16]  # exactly one page: the first decode step needs a new one
    full = RequestOptions(stopping=StoppingOptions(max_new_tokens=6, ignore_eos=True))
    solo = engine.generate([base], [full])[0].output_token_ids
    target = engine.pages.table if where == "write_pages" else engine.kv
    real = getattr(target, where)
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == (1 if path == "admit" else 2):
            raise InjectedFault(where)
        return real(*args)

    monkeypatch.setattr(target, where, failing)
    rid = engine.add_request(base, full)
    run = Run()
    run_until_done(engine, run)
    assert run.reports[rid].finish_reason == FinishReason.ERROR
    assert engine.pool.num_used == 0
    assert sorted(engine.pages.table._free_slots) == list(range(engine.config.max_batch_size))
    monkeypatch.undo()
    assert engine.generate([base], [full])[0].output_token_ids == solo


def test_the_issue_example_temperature_overflow_is_refused_and_isolated(engine: LLMEngine) -> None:
    with pytest.raises(ValueError, match=r"^temperature: must be <= 3.403e\+38"):
        SamplingOptions(temperature=1e39, seed=1)
    assert isinstance(engine.sampler, Sampler)


@pytest.mark.parametrize("part", ["guardian", "pages"])
def test_a_failure_while_releasing_one_request_ends_it_in_error_and_frees_the_rest(
    engine: LLMEngine, monkeypatch: pytest.MonkeyPatch, part: str
) -> None:
    base = engine.tokenizer.encode(PROMPT)
    options = [request_options(i) for i in range(3)]
    solo = solo_tokens(engine, [base] * 3, options)
    ids = [engine.add_request(base, o) for o in options]
    victim = ids[1]
    target = engine.guardian if part == "guardian" else engine.pages
    real = target.release

    def release(seq):
        real(seq)  # what it held is freed, then the failure
        if seq.request_id == victim:
            raise InjectedFault(part)

    monkeypatch.setattr(target, "release", release)
    run = Run()
    run_until_done(engine, run)
    report = run.reports[victim]
    assert report.finish_reason == FinishReason.ERROR and report.error.startswith(f"{part} release:")
    assert report.output_token_ids == run.tokens[victim] == solo[1]  # every token was streamed
    for index in (0, 2):
        assert run.reports[ids[index]].output_token_ids == solo[index]
    assert engine.pool.num_used == 0 and not engine.has_unfinished()
