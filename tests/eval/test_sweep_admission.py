"""No survivorship: a time-bounded sweep is cut at admission, and the report says which problems ran."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from eval.completion import Completion, Job
from eval.engine_runner import run_on_engine
from eval.records import GuardianOnline, SampleRecord
from eval.report import problems_ran
from eval.sweep import admitted_completions
from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.options import RequestOptions, StoppingOptions

CONDITIONS = 2
PROBLEMS = 7


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[LLMEngine]:
    # One request at a time: the runner keeps 1 + 8 jobs in the engine, so at the start it has
    # submitted every job of problems 0-3 and the first job of problem 4.
    eng = LLMEngine.from_config(
        EngineConfig(model=str(tiny_model_dir), kv_cache_tokens=4096, max_batch_size=1, guardian_workers=0)
    )
    yield eng
    eng.close()


def test_a_time_cut_admits_no_new_problem_and_finishes_every_admitted_one(engine: LLMEngine) -> None:
    prompt = tuple(engine.tokenizer.encode("What is 10 minus 4?"))
    jobs = [Job(p * CONDITIONS + c, prompt, p) for p in range(PROBLEMS) for c in range(CONDITIONS)]
    # Condition 1 runs 4x longer: under a cut at completion its requests would be the ones lost.
    lengths = (6, 24)
    now = [0.0]

    def options_for(job: Job) -> RequestOptions:
        tokens = lengths[job.key % CONDITIONS]
        return RequestOptions(stopping=StoppingOptions(max_new_tokens=tokens, ignore_eos=True))

    completions: list[Completion] = []
    lines: list[str] = []
    for completion in run_on_engine(
        engine, jobs, options_for, log=lines.append, stop_after_seconds=10.0, clock=lambda: now[0]
    ):
        completions.append(completion)
        now[0] = 60.0  # the limit passes as soon as the first request finished
    keys = sorted(c.key for c in completions)
    # Problems 0-4 were admitted before the limit; the second job of problem 4 was still waiting
    # and runs anyway. Problems 5 and 6 never start. Nothing is aborted.
    assert keys == list(range(5 * CONDITIONS))
    assert {c.finish_reason for c in completions} == {"length"}
    assert [len(c.output_token_ids) for c in sorted(completions, key=lambda c: c.key)] == [6, 24] * 5
    assert [line for line in lines if "time limit" in line] == [
        "[lil-eval] time limit reached: no new problem admitted (5 admitted); 4 jobs dropped, "
        "9 still to finish"
    ]
    assert [c.key for c in admitted_completions(completions, CONDITIONS)] == keys
    assert not engine.has_unfinished()


def completion(key: int, finish_reason: str = "length") -> Completion:
    return Completion(key, 3, (1, 2), "x", finish_reason, 0.1, 0.2, 0.3, 0.0, 1.0, 2, GuardianOnline())


def test_admitted_completions_refuse_holes_partial_problems_and_aborts() -> None:
    assert [c.key for c in admitted_completions([completion(k) for k in (3, 1, 0, 2)], 2)] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="prefix"):
        admitted_completions([completion(k) for k in (0, 1, 4, 5)], 2)  # problem 1 missing
    with pytest.raises(RuntimeError, match="prefix"):
        admitted_completions([completion(k) for k in (0, 1, 2)], 2)  # problem 1 half done
    with pytest.raises(RuntimeError, match=r"problems \[1\] were aborted"):
        admitted_completions([completion(0), completion(1), completion(2, "aborted"), completion(3)], 2)


def record(dataset: str, position: int) -> SampleRecord:
    return SampleRecord(
        dataset=dataset,
        problem_id=f"{dataset}-id{position}",
        model="m",
        device="cpu",
        backend="reference",
        policy="full",
        budget_tokens=0,
        max_new_tokens=8,
        prompt_tokens=3,
        output_tokens=2,
        output_text="x",
        gold="1",
        finish_reason="length",
        ttft_seconds=0.1,
        decode_seconds=0.1,
        jct_seconds=0.2,
        queue_seconds=0.0,
        mean_attended_pages=1.0,
        peak_kv_pages=2,
        problem_position=position,
    )


def test_report_names_the_problems_that_ran_and_any_hole() -> None:
    prefix = [record("gsm8k", p) for p in (0, 1, 2)] + [record("math500", p) for p in (1, 0)]
    assert problems_ran(prefix + prefix) == (
        "gsm8k: the first 3 in file order (0-based positions 0-2); "
        "math500: the first 2 in file order (0-based positions 0-1)"
    )
    holes = [record("math500", p) for p in (0, 1, 2, 4, 6, 7, 8)]
    assert problems_ran(holes) == "math500: 7 at positions 0-2, 4, 6-8, NOT a prefix (missing 3, 5)"
    old = [replace(record("gsm8k", 0), problem_position=-1), replace(record("gsm8k", 1), problem_position=-1)]
    assert problems_ran(old) == "gsm8k 2 (file positions not recorded)"
