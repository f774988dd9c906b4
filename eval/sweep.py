"""A sweep: every selected problem under every condition, one record per sample.

Jobs are ordered problem-major (all conditions of problem 1, then problem 2...) so every
condition shares the same batches over the run and their timings compare fairly; the datasets
take turns. A run bounded by ``stop_after_seconds`` is cut at admission: no new problem starts
after the limit, and every admitted problem runs to the end under every condition. So the
problems that ran are the first ones of each set in file order, without holes, and a long
output is never what gets a problem dropped (no survivorship). The meta file lists them.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from eval.completion import Completion, Job
from eval.conditions import Condition
from eval.datasets import DatasetSelection, Problem, load_problems
from eval.grading import Grade, grade_many, grading_available
from eval.guardian_replay import DEFAULT_BASE_INTERVAL, record_trajectory
from eval.prompting import prompt_token_ids
from eval.records import SampleRecord, write_records

STUDY_SELECTION = "exact"  # EngineConfig.selection of every in-process sweep
SERVER_SELECTION = "the server's --selection (run it with --selection exact)"


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """Everything that decides a sweep's records. ``server`` set: run through that sidecar
    (``model`` then only supplies the tokenizer). ``grade_workers`` processes run math-verify."""

    model: str
    data_dir: Path
    datasets: tuple[DatasetSelection, ...]
    conditions: tuple[Condition, ...]
    max_new_tokens: int = 1024
    device: str = "cpu"
    backend: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 64
    kv_cache_tokens: int = 0  # 0: enough for max_batch_size full-length requests
    server: str | None = None
    concurrency: int = 64
    grade_workers: int = 0
    base_interval: int = DEFAULT_BASE_INTERVAL
    save_token_ids: bool = False
    stop_after_seconds: float = 0.0  # 0: no limit; else admit no new problem after this many seconds
    command: str = field(default="")

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("datasets: name at least one dataset")
        if not self.conditions:
            raise ValueError("conditions: the sweep has no condition to run")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {self.max_batch_size}")
        if self.base_interval < 1:
            raise ValueError(f"base_interval: must be >= 1, got {self.base_interval}")
        if self.server and self.stop_after_seconds:
            raise ValueError(
                "stop_after_seconds: only the in-process engine run can be cut; drop it with --server"
            )
        for condition in self.conditions:
            if condition.guardian and condition.guardian.interval_tokens % self.base_interval:
                raise ValueError(
                    f"guardian: online interval {condition.guardian.interval_tokens} must be a multiple of "
                    f"the trajectory base interval {self.base_interval}"
                )


def meta_path(records_path: Path) -> Path:
    """``runs/x/records.jsonl.gz`` -> ``runs/x/records.meta.json``."""
    return records_path.parent / (records_path.name.split(".")[0] + ".meta.json")


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()})"


def _load_tokenizer(model: str) -> Any:
    from lil_sparse.loading.gguf_metadata import GGUFMetadata
    from lil_sparse.loading.gguf_tokenizer import tokenizer_from_gguf
    from lil_sparse.loading.loader import resolve_source
    from lil_sparse.loading.tokenizer import Tokenizer

    path, _ = resolve_source(model)
    return (
        Tokenizer.from_folder(path) if path.is_dir() else tokenizer_from_gguf(GGUFMetadata.open(path), path)
    )


def _completions(config: SweepConfig, jobs: list[Job], engine: Any) -> Iterator[Completion]:
    n = len(config.conditions)

    def options_for(job: Job) -> Any:
        return config.conditions[job.key % n].request_options(config.max_new_tokens)

    if config.server:
        from eval.server_runner import run_on_server

        print(f"[lil-eval] selection: {SERVER_SELECTION}", file=sys.stderr)
        yield from run_on_server(config.server, jobs, options_for, config.concurrency)
        return
    from eval.engine_runner import run_on_engine

    yield from run_on_engine(engine, jobs, options_for, stop_after_seconds=config.stop_after_seconds)


def _load_engine(config: SweepConfig) -> Any:
    from lil_sparse.config import EngineConfig
    from lil_sparse.engine import LLMEngine

    engine_config = EngineConfig(
        model=config.model,
        device=config.device,
        dtype=config.dtype,
        backend=config.backend,
        max_batch_size=config.max_batch_size,
        # Room for a full batch of prompts (under 1024 tokens) with their whole answers.
        kv_cache_tokens=config.kv_cache_tokens or config.max_batch_size * 2 * (config.max_new_tokens + 1024),
        max_waiting=4 * config.max_batch_size,
        guardian_workers=0,  # inline checks: online stop steps equal offline replay
        # Every budget honoured: under "when_faster" a request over its budget could attend
        # densely in some steps, depending on its batch mates (EngineConfig.selection).
        selection=STUDY_SELECTION,
    )
    loading = time.perf_counter()
    engine = LLMEngine.from_config(engine_config)
    print(
        f"[lil-eval] loaded {engine.info.model_name} in {time.perf_counter() - loading:.1f}s", file=sys.stderr
    )
    return engine


def run_sweep(config: SweepConfig, out: Path) -> list[SampleRecord]:
    """Run the sweep, write the records (JSONL, gzip for ``.gz``) and a meta file; return the records."""
    problems = _interleave([load_problems(config.data_dir, selection) for selection in config.datasets])
    engine = None if config.server else _load_engine(config)
    if engine is None:
        tokenizer = _load_tokenizer(config.model)
        backend_name, model_name = "server", Path(config.model).name
    else:
        tokenizer = engine.tokenizer
        backend_name, model_name = engine.info.backend, engine.info.model_name
    prompts = [tuple(prompt_token_ids(tokenizer, problem)) for problem in problems]
    longest_prompt = max(len(p) for p in prompts)
    n = len(config.conditions)
    jobs = [Job(i * n + c, prompts[i], i) for i in range(len(problems)) for c in range(n)]
    device_name = _device_name(config.device) if not config.server else f"server {config.server}"
    started = time.perf_counter()
    completions = admitted_completions(list(_completions(config, jobs, engine)), n)
    wall = time.perf_counter() - started
    if engine is not None:
        engine.close()
    # Guardian sees the prompt decoded with its special tokens (as the engine hands it over).
    prompt_texts = [tokenizer.decode(list(p), skip_special_tokens=False) for p in prompts]
    records = _build_records(
        config, completions, problems, prompt_texts, tokenizer, (model_name, device_name, backend_name)
    )
    write_records(out, records)
    meta = {
        "command": config.command or " ".join(sys.argv),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": model_name,
        "device": device_name,
        "backend": backend_name,
        # In process the study forces exact selection; a server applies its own --selection.
        "selection": STUDY_SELECTION if engine is not None else SERVER_SELECTION,
        "host": platform.node(),
        "records": len(records),
        "problems_run": len(records) // n,
        "problems_selected": len(problems),
        # Cut at admission: every problem that started ran under every condition.
        "admission_cut": True,
        "problems_run_per_set": _problems_run_per_set(problems[: len(records) // n]),
        "sweep_wall_seconds": round(wall, 1),
        "generated_tokens": sum(r.output_tokens for r in records),
        "longest_prompt_tokens": longest_prompt,
        "config": {k: v for k, v in asdict(config).items() if k not in ("data_dir", "conditions", "datasets")}
        | {
            "datasets": [f"{d.name}:{d.limit or 'all'}" for d in config.datasets],
            "conditions": [c.label() for c in config.conditions],
        },
    }
    meta_path(out).write_text(json.dumps(meta, indent=2))
    return records


def _build_records(
    config: SweepConfig,
    completions: list[Completion],
    problems: list[Problem],
    prompt_texts: list[str],
    tokenizer: Any,
    names: tuple[str, str, str],
) -> list[SampleRecord]:
    """Attach trajectories and grades to the completions (grading runs in parallel)."""
    n = len(config.conditions)
    model_name, device_name, backend_name = names
    pairs = [(c.output_text, problems[c.key // n].answer) for c in completions]
    grades: list[Grade | None] = (
        list(grade_many(pairs, workers=config.grade_workers)) if grading_available() else [None] * len(pairs)
    )

    def decode_prefixes(prefixes: list[list[int]]) -> list[str]:
        return list(tokenizer.backend.decode_batch(prefixes, skip_special_tokens=True))

    records = []
    for completion, grade in zip(completions, grades, strict=True):
        problem, condition = problems[completion.key // n], config.conditions[completion.key % n]
        trajectory = record_trajectory(
            prompt_texts[completion.key // n],
            completion.output_token_ids,
            decode_prefixes,
            config.base_interval,
        )
        records.append(
            SampleRecord(
                dataset=problem.dataset,
                problem_id=problem.problem_id,
                model=model_name,
                device=device_name,
                backend=backend_name,
                policy=condition.policy,
                budget_tokens=condition.budget_tokens,
                max_new_tokens=config.max_new_tokens,
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
                output_token_ids=completion.output_token_ids if config.save_token_ids else (),
                problem_position=problem.position,
            )
        )
    return records


def admitted_completions(completions: list[Completion], conditions: int) -> list[Completion]:
    """The completions in key order, after checking the no-survivorship rule.

    The problems that ran must be the first ones of the job list (a cut at admission leaves a
    prefix), each under all ``conditions`` and none aborted. Raises ``RuntimeError`` otherwise:
    dropping an unfinished problem would silently bias the sample towards short runs.
    """
    ordered = sorted(completions, key=lambda c: c.key)
    keys = [c.key for c in ordered]
    if keys != list(range(len(keys))) or len(keys) % conditions:
        problems = sorted({key // conditions for key in keys})
        raise RuntimeError(
            f"sweep: the problems that ran are not a prefix with every condition finished "
            f"({len(keys)} completions over problems {problems[:10]}...); refusing to drop any"
        )
    aborted = [c.key // conditions for c in ordered if c.finish_reason == "aborted"]
    if aborted:
        raise RuntimeError(f"sweep: problems {sorted(set(aborted))} were aborted; refusing to drop them")
    return ordered


def _problems_run_per_set(problems: list[Problem]) -> dict[str, dict[str, Any]]:
    """Per dataset: how many problems ran and their ids, in file order."""
    per_set: dict[str, dict[str, Any]] = {}
    for problem in problems:
        entry = per_set.setdefault(problem.dataset, {"count": 0, "positions": [], "ids": []})
        entry["count"] += 1
        entry["positions"].append(problem.position)
        entry["ids"].append(problem.problem_id)
    return per_set


def _interleave(sets: list[list[Problem]]) -> list[Problem]:
    """Round-robin over the sets, each in file order."""
    longest = max((len(s) for s in sets), default=0)
    return [s[i] for i in range(longest) for s in sets if i < len(s)]
