"""Turn a sweep's completions into records and append them to the records file as they finish.

Records go to the file whole problems at a time and in job order, so a sweep killed at any
moment leaves a file that holds the first problems of its job list under every condition (and
at most one record cut mid-write, which ``--resume`` drops). Each flush appends one gzip member
to a ``.gz`` file, which gzip readers take as one stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.completion import Completion, Job
from eval.conditions import Condition
from eval.datasets import Problem
from eval.grading import Grade, grade_many, grading_available
from eval.guardian_replay import record_trajectory
from eval.records import SampleRecord, write_records


@dataclass(frozen=True, slots=True)
class RecordBuilder:
    """Everything that turns a :class:`Completion` into a :class:`SampleRecord`: the problems and
    their prompts as Guardian sees them (decoded with special tokens), the conditions, and the
    (model, device, backend) names. ``grading_pool`` grades in parallel when set."""

    problems: Sequence[Problem]
    prompt_texts: Sequence[str]
    conditions: tuple[Condition, ...]
    max_new_tokens: int
    base_interval: int
    save_token_ids: bool
    names: tuple[str, str, str]
    tokenizer: Any
    grading_pool: Executor | None = None

    def build(self, completions: list[Completion]) -> list[SampleRecord]:
        """Attach trajectories and grades to the completions, in their order."""
        n = len(self.conditions)
        pairs = [(c.output_text, self.problems[c.key // n].answer) for c in completions]
        grades: list[Grade | None] = (
            list(grade_many(pairs, pool=self.grading_pool)) if grading_available() else [None] * len(pairs)
        )
        return [self._record(c, g) for c, g in zip(completions, grades, strict=True)]

    def _decode_prefixes(self, prefixes: list[list[int]]) -> list[str]:
        return list(self.tokenizer.backend.decode_batch(prefixes, skip_special_tokens=True))

    def _record(self, completion: Completion, grade: Grade | None) -> SampleRecord:
        n = len(self.conditions)
        problem, condition = self.problems[completion.key // n], self.conditions[completion.key % n]
        model_name, device_name, backend_name = self.names
        trajectory = record_trajectory(
            self.prompt_texts[completion.key // n],
            completion.output_token_ids,
            self._decode_prefixes,
            self.base_interval,
        )
        return SampleRecord(
            dataset=problem.dataset,
            problem_id=problem.problem_id,
            model=model_name,
            device=device_name,
            backend=backend_name,
            policy=condition.policy,
            budget_tokens=condition.budget_tokens,
            max_new_tokens=self.max_new_tokens,
            prompt_tokens=completion.prompt_tokens,
            output_tokens=len(completion.output_token_ids),
            output_text=completion.output_text,
            gold=problem.answer,
            finish_reason=completion.finish_reason,
            ttft_seconds=completion.ttft_seconds,
            decode_seconds=completion.decode_seconds,
            jct_seconds=completion.jct_seconds,
            queue_seconds=completion.queue_seconds,
            mean_attended_pages=completion.mean_attended_pages,
            peak_kv_pages=completion.peak_kv_pages,
            guardian=completion.guardian,
            trajectory=trajectory,
            correct=grade.correct if grade else None,
            extracted_answer=grade.extracted if grade else "",
            output_token_ids=completion.output_token_ids if self.save_token_ids else (),
            problem_position=problem.position,
        )


class PrefixWriter:
    """Appends the records of ``jobs`` (in key order) to ``out`` as soon as every job before them
    has finished, whole problems at a time (``Job.problem``), then calls ``after_write``.

    A problem with an aborted job raises ``RuntimeError`` before anything of it is written:
    dropping it would bias the sample towards short runs (no survivorship).
    """

    def __init__(
        self,
        out: Path,
        jobs: Sequence[Job],
        build: Callable[[list[Completion]], list[SampleRecord]],
        after_write: Callable[[], None] = lambda: None,
    ):
        self._out = out
        self._jobs = jobs
        self._build = build
        self._after_write = after_write
        self._next = 0  # jobs[:_next] are written
        self._finished: dict[int, Completion] = {}
        self.completions: list[Completion] = []
        self.records: list[SampleRecord] = []

    def add(self, completion: Completion) -> None:
        """Take one finished job; write every problem now complete at the head of the job list."""
        self._finished[completion.key] = completion
        end = self._next
        while end < len(self._jobs) and self._jobs[end].key in self._finished:
            end += 1
        # Back off to a problem boundary: the problem at ``end`` may have jobs still running.
        while self._next < end < len(self._jobs) and self._jobs[end].problem == self._jobs[end - 1].problem:
            end -= 1
        if end == self._next:
            return
        batch = self._jobs[self._next : end]
        ready = [self._finished.pop(job.key) for job in batch]
        aborted = sorted(
            {job.problem for job, c in zip(batch, ready, strict=True) if c.finish_reason == "aborted"}
        )
        if aborted:
            raise RuntimeError(f"sweep: problems {aborted} were aborted; refusing to drop them")
        records = self._build(ready)
        write_records(self._out, records, append=True)
        self._next = end
        self.completions += ready
        self.records += records
        self._after_write()

    @property
    def unwritten(self) -> list[int]:
        """Keys of finished jobs still held back: a job before them never finished."""
        return sorted(self._finished)
