"""Resuming a sweep: check that a records file belongs to this sweep, and find what it still lacks.

A sweep resumed with ``--resume`` appends to its records file only if its meta file says the
records were made under the same settings, field by field (:func:`check_meta`). The fields are
those of the meta that decide what a sample's output is, or what its record holds:

- ``model``: the model's resolved name (not the path given, which may differ between machines);
- ``device``: the device's name (e.g. the GPU model: greedy outputs depend on its arithmetic);
  not compared with ``--server``, where the sweep cannot know it;
- ``dtype``: the engine's resolved dtype, and ``backend``: the resolved attention backend, both
  checked once the engine is loaded (``dtype`` only where the meta records it);
- ``selection``: exact (in process) or the server's setting;
- ``config.device``, ``config.dtype``, ``config.backend``: the values asked for;
- ``config.max_new_tokens``: the length cap;
- ``config.datasets``: each set with its first-N limit, in the order they interleave;
- ``config.conditions``: each condition's policy, budget, Guardian interval and threshold,
  stop action and forced-answer bound (their labels, in order);
- ``config.base_interval`` and ``config.save_token_ids``: what the records hold.

Each kept record is checked as well (:func:`recorded_keys`): it must be one of the selected
problems with the same id and gold answer at its file position (the data folder's path may
change, its content may not), under one of the conditions, with the same model and cap.

Decoding is greedy, so there is no seed to compare. Batch size, KV cache size, concurrency,
grading workers and the limits may change between slices: they decide how fast a slice runs,
not what a request outputs. (On a GPU, logits are not batch invariant, so greedy outputs depend
on batch mates a little, within one sweep as much as across slices.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.conditions import Condition
from eval.datasets import Problem
from eval.records import SampleRecord, read_records_for_resume, replace_records

if TYPE_CHECKING:
    from eval.sweep import SweepConfig

ConditionKey = tuple[str, int, int, int, str, int]
_MISSING = object()


def output_settings(
    config: SweepConfig, model_name: str, device_name: str | None, selection: str
) -> dict[str, Any]:
    """The meta fields (dotted paths) that decide a sweep's outputs, with this sweep's values
    (``device_name`` None leaves the device out)."""
    settings = {
        "model": model_name,
        "device": device_name,
        "selection": selection,
        "config.device": config.device,
        "config.dtype": config.dtype,
        "config.backend": config.backend,
        "config.max_new_tokens": config.max_new_tokens,
        "config.datasets": [f"{d.name}:{d.limit or 'all'}" for d in config.datasets],
        "config.conditions": [c.label() for c in config.conditions],
        "config.base_interval": config.base_interval,
        "config.save_token_ids": config.save_token_ids,
    }
    return {name: value for name, value in settings.items() if value is not None}


def check_meta(meta: dict[str, Any], settings: dict[str, Any], path: Path, optional: bool = False) -> None:
    """Raise ``ValueError`` naming the first field of ``settings`` whose value differs from the
    meta's (or that the meta lacks, unless ``optional``: then a missing field is skipped)."""
    for name, value in settings.items():
        found: Any = meta
        for part in name.split("."):
            found = found.get(part, _MISSING) if isinstance(found, dict) else _MISSING
        if found is _MISSING and optional:
            continue
        expected = json.loads(json.dumps(value))  # tuples -> lists, as the meta holds them
        if found is _MISSING or found != expected:
            held = "nothing" if found is _MISSING else json.dumps(found)
            raise ValueError(
                f"resume: {name} differs: {path} was made with {held}, this sweep has "
                f"{json.dumps(expected)}; resume with the same settings or write to a new --out"
            )


def read_meta(meta: Path, records: Path) -> dict[str, Any]:
    """The meta file of an existing records file; refuses to resume without one."""
    if not meta.is_file():
        raise ValueError(
            f"resume: {records} has no meta file {meta}, so its settings cannot be checked; "
            "write to a new --out"
        )
    try:
        loaded: dict[str, Any] = json.loads(meta.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"resume: {meta} is not valid JSON ({error}); write to a new --out") from error
    return loaded


def condition_key(condition: Condition) -> ConditionKey:
    """What tells the conditions apart in a record: policy, budget, Guardian interval and
    threshold (0 when off), stop action ("" when off) and forced-answer bound (0 unless answer)."""
    g = condition.guardian
    answer = g is not None and condition.guardian_action == "answer"
    return (
        condition.policy,
        condition.budget_tokens,
        g.interval_tokens if g else 0,
        g.threshold_bytes if g else 0,
        condition.guardian_action if g else "",
        condition.answer_max_tokens if answer else 0,
    )


def record_condition_key(record: SampleRecord) -> ConditionKey:
    g = record.guardian
    return (*record.condition, g.answer_max_tokens if g.enabled and g.action == "answer" else 0)


def recorded_keys(
    records: list[SampleRecord],
    problems: list[Problem],
    conditions: tuple[Condition, ...],
    expected: dict[str, Any],
    path: Path,
) -> set[int]:
    """The job keys (``problem * len(conditions) + condition``) the records already hold.

    Each record must be one of ``problems`` (same set, file position, id and gold answer: the
    data did not change), under one of ``conditions``, with the record fields of ``expected``
    (e.g. ``{"model": ..., "max_new_tokens": ...}``), and none twice; raises ``ValueError``
    naming the record otherwise.
    """
    by_place = {(p.dataset, p.position): i for i, p in enumerate(problems)}
    by_condition = {condition_key(c): j for j, c in enumerate(conditions)}
    keys: set[int] = set()
    for number, record in enumerate(records, start=1):
        where = f"resume: {path}: record {number} ({record.dataset} position {record.problem_position})"
        i = by_place.get((record.dataset, record.problem_position))
        if i is None:
            raise ValueError(f"{where} is not one of this sweep's problems")
        problem = problems[i]
        if (record.problem_id, record.gold) != (problem.problem_id, problem.answer):
            raise ValueError(
                f"{where} is {record.problem_id!r} (gold {record.gold!r}) but the data file now has "
                f"{problem.problem_id!r} (gold {problem.answer!r}) there: the data changed"
            )
        for name, value in expected.items():
            if getattr(record, name) != value:
                raise ValueError(f"{where} has {name} {getattr(record, name)!r}, this sweep {value!r}")
        j = by_condition.get(record_condition_key(record))
        if j is None:
            raise ValueError(f"{where} ran a condition this sweep does not have: {record.condition}")
        key = i * len(conditions) + j
        if key in keys:
            raise ValueError(f"{where} under {conditions[j].label()} is recorded twice")
        keys.add(key)
    return keys


def kept_records(out: Path) -> list[SampleRecord]:
    """The records of a file to resume; one last line cut by a kill is dropped and the file
    rewritten without it (appending after a cut line or gzip member would corrupt it)."""
    recovered = read_records_for_resume(out)
    if recovered.torn:
        print(f"[lil-eval] resume: {out}: dropped a torn last record: {recovered.torn}", file=sys.stderr)
    if recovered.needs_rewrite:
        replace_records(out, recovered.records)
    return recovered.records


def slice_keys(missing: list[int], conditions: int, max_problems: int) -> list[int]:
    """The missing job keys this run admits: all, or those of the first ``max_problems``
    problems that miss any (a cut at admission by count)."""
    if not max_problems:
        return missing
    first = set(sorted({key // conditions for key in missing})[:max_problems])
    return [key for key in missing if key // conditions in first]
