"""A sweep: every selected problem under every condition, one record per sample.

Jobs are ordered problem-major (all conditions of problem 1, then problem 2...) so every
condition shares the same batches over the run and their timings compare fairly; the datasets
take turns. A run bounded by ``stop_after_seconds`` is cut at admission: no new problem starts
after the limit, and every admitted problem runs to the end under every condition. So the
problems that ran are the first ones of each set in file order, without holes, and a long
output is never what gets a problem dropped (no survivorship). The meta file lists them.

Records reach the file whole problems at a time as they finish (:mod:`eval.sweep_writer`), so a
sweep cut by time, by ``max_problems`` or by a kill continues with ``resume`` (:mod:`eval.resume`
lists what must match): the study runs in slices, one per session.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Collection, Iterator
from concurrent.futures import Executor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.completion import Completion, Job
from eval.conditions import Condition
from eval.datasets import DatasetSelection, Problem, load_problems
from eval.grading import grading_available, grading_pool
from eval.guardian_replay import DEFAULT_BASE_INTERVAL
from eval.prompting import prompt_token_ids
from eval.records import SampleRecord, write_records
from eval.resume import check_meta, kept_records, output_settings, read_meta, recorded_keys, slice_keys
from eval.sweep_meta import finish_meta, record_progress, start_meta, write_meta
from eval.sweep_writer import PrefixWriter, RecordBuilder

STUDY_SELECTION = "exact"  # EngineConfig.selection of every in-process sweep
SERVER_SELECTION = "the server's --selection (run it with --selection exact)"


@dataclass(frozen=True, slots=True)
class SweepConfig:
    """Everything that decides a sweep's records. ``server`` set: run through that sidecar
    (``model`` then only supplies the tokenizer). ``grade_workers`` processes run math-verify.
    ``resume``: continue the records file if it exists (see :func:`run_sweep`); ``overwrite``:
    start an existing records file afresh (without either, an existing non-empty file is
    refused, so a forgotten ``--resume`` cannot wipe earlier slices). ``max_problems`` > 0
    admits at most that many problems not yet recorded (a slice cut by count, as
    ``stop_after_seconds`` cuts by time; both cut at admission)."""

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
    resume: bool = False
    overwrite: bool = False
    max_problems: int = 0  # 0: no limit
    command: str = field(default="")

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("datasets: name at least one dataset")
        names = [selection.name for selection in self.datasets]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"datasets: {', '.join(repeated)} named twice; name each set once")
        if not self.conditions:
            raise ValueError("conditions: the sweep has no condition to run")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {self.max_batch_size}")
        if self.base_interval < 1:
            raise ValueError(f"base_interval: must be >= 1, got {self.base_interval}")
        if self.stop_after_seconds < 0:
            raise ValueError(f"stop_after_seconds: must be >= 0 (0: no limit), got {self.stop_after_seconds}")
        if self.max_problems < 0:
            raise ValueError(f"max_problems: must be >= 0 (0: no limit), got {self.max_problems}")
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


def _engine_config(config: SweepConfig) -> Any:
    """The engine's validated config for a local sweep (``ValueError`` naming a bad field)."""
    from lil_sparse.config import EngineConfig

    return EngineConfig(
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


def _count(number: int, noun: str) -> str:
    """``1 problem``, ``2 problems``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def check_before_loading(config: SweepConfig) -> None:
    """What a local sweep can check before it loads the model or writes anything, so a mistake
    costs no load and leaves no half-made output: the engine's config, the device, and every
    condition's sparse options against the engine's page size (the model's depth, which Quest's
    dense layers are checked against, is known only once it loads). Raises ``ValueError``."""
    engine_config = _engine_config(config)
    if engine_config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device: {engine_config.device} is not available here (no CUDA); use cpu")
    for condition in config.conditions:
        sparse = condition.request_options(config.max_new_tokens).sparse
        sparse.validate_for(engine_config.page_size, num_layers=2**31 - 1)


def _load_engine(config: SweepConfig) -> Any:
    from lil_sparse.engine import LLMEngine

    engine_config = _engine_config(config)
    loading = time.perf_counter()
    engine = LLMEngine.from_config(engine_config)
    print(
        f"[lil-eval] loaded {engine.info.model_name} in {time.perf_counter() - loading:.1f}s", file=sys.stderr
    )
    return engine


def run_sweep(config: SweepConfig, out: Path) -> list[SampleRecord]:
    """Run the sweep, appending records (JSONL, gzip for ``.gz``) to ``out`` as problems finish,
    and keep a meta file beside it; return every record the file then holds, in job order.

    Without ``config.resume`` the file is started afresh if ``config.overwrite`` allows it (an
    existing non-empty ``out`` is refused otherwise: ``ValueError`` naming ``out``). With it and
    ``out`` present, the sweep first checks ``out``'s meta against its own settings (the fields are listed in
    :mod:`eval.resume`; ``ValueError`` names the first that differs), keeps the records (a last
    line cut by a kill is dropped, and said on stderr) and runs only the (problem, condition)
    pairs missing, in the same order as one uninterrupted sweep. A slice is cut at admission
    (``stop_after_seconds``, ``max_problems``) like a whole sweep, so the slices together hold
    the records of one sweep of their combined size. Nothing missing: nothing runs.
    """
    if not out.name.endswith((".jsonl", ".jsonl.gz")):
        raise ValueError(f"out: {out} must end in .jsonl or .jsonl.gz (records are JSON lines)")
    if not config.server:
        check_before_loading(config)
    problems = _interleave([load_problems(config.data_dir, selection) for selection in config.datasets])
    n = len(config.conditions)
    model_name = Path(config.model).name if config.server else _model_name(config.model)
    device_name = f"server {config.server}" if config.server else _device_name(config.device)
    selection = SERVER_SELECTION if config.server else STUDY_SELECTION
    if out.exists() and out.stat().st_size > 0 and not (config.resume or config.overwrite):
        raise ValueError(
            f"out: {out} already holds records; pass --resume to continue that sweep or "
            "--overwrite to start it afresh"
        )
    resuming = config.resume and out.exists()
    kept: list[SampleRecord] = []
    meta: dict[str, Any] | None = None
    done: set[int] = set()
    if resuming:
        meta = read_meta(meta_path(out), out)
        settings = output_settings(config, model_name, None if config.server else device_name, selection)
        check_meta(meta, settings, out)
        kept = kept_records(out)
        expected = {"model": model_name, "max_new_tokens": config.max_new_tokens}
        done = recorded_keys(kept, problems, config.conditions, expected, out)
    missing = slice_keys([k for k in range(len(problems) * n) if k not in done], n, config.max_problems)
    if config.resume and not resuming:
        print(f"[lil-eval] resume: no records at {out} yet; starting the sweep", file=sys.stderr)
    if resuming:
        print(
            f"[lil-eval] resume: {out} holds {len(kept)} of {len(problems) * n} records; "
            f"this slice runs {len(missing)} ({_count(len({k // n for k in missing}), 'problem')})",
            file=sys.stderr,
        )
    if not missing:
        return kept
    if not config.server:
        from lil_sparse.loading.torch_threads import set_torch_threads

        set_torch_threads()  # $LIL_SPARSE_TORCH_THREADS, else half the cores (as the server)
    with ExitStack() as stack:
        grading_pool = _grading_pool(config.grade_workers, stack)  # forked before the engine exists
        engine = None if config.server else _load_engine(config)
        if engine is not None:
            stack.callback(engine.close)
        tokenizer = _load_tokenizer(config.model) if engine is None else engine.tokenizer
        backend_name = "server" if engine is None else engine.info.backend
        dtype = None if engine is None else engine.info.dtype
        if meta is not None:
            check_meta(
                meta, {"backend": backend_name} | ({"dtype": dtype} if dtype else {}), out, optional=True
            )
        else:
            write_records(out, [])  # a fresh sweep: the file starts empty and grows as problems finish
        prompts = [tuple(prompt_token_ids(tokenizer, problem)) for problem in problems]
        names = (model_name, device_name, backend_name)
        meta = start_meta(meta, config, names, dtype, selection, len(problems), max(len(p) for p in prompts))
        write_meta(meta_path(out), meta)
        # Guardian sees the prompt decoded with its special tokens (as the engine hands it over).
        prompt_texts = [tokenizer.decode(list(p), skip_special_tokens=False) for p in prompts]
        builder = RecordBuilder(
            problems,
            prompt_texts,
            config.conditions,
            config.max_new_tokens,
            config.base_interval,
            config.save_token_ids,
            names,
            tokenizer,
            grading_pool,
        )
        jobs = [Job(k, prompts[k // n], k // n) for k in missing]
        started = time.perf_counter()

        def progress() -> None:  # a slice killed later still says what it added, and how fast
            record_progress(meta, len(writer.records), time.perf_counter() - started)
            write_meta(meta_path(out), meta)

        writer = PrefixWriter(out, jobs, builder.build, progress)
        received: list[Completion] = []
        for completion in _completions(config, jobs, engine):
            received.append(completion)
            writer.add(completion)
        wall = time.perf_counter() - started
    admitted_completions(received, n, done)  # the slice and the kept records make a prefix
    records = kept + writer.records
    finish_meta(meta, records, problems, n, wall, len(writer.records))
    write_meta(meta_path(out), meta)
    return records


def _model_name(model: str) -> str:
    from lil_sparse.loading.loader import resolve_source

    return resolve_source(model)[1]


def _grading_pool(workers: int, stack: ExitStack) -> Executor | None:
    """One process pool for the whole sweep (grading runs as problems finish); None grades inline.
    Its workers start here, so they fork before the engine holds a device or threads."""
    if workers <= 1 or not grading_available():
        return None
    pool = stack.enter_context(grading_pool(workers))
    pool.submit(grading_available).result()  # the fork start method launches every worker now
    return pool


def admitted_completions(
    completions: list[Completion], conditions: int, recorded: Collection[int] = ()
) -> list[Completion]:
    """The completions in key order, after checking the no-survivorship rule.

    The problems that ran, with the job keys already ``recorded`` by earlier slices, must be the
    first ones of the job list (a cut at admission leaves a prefix), each under all
    ``conditions`` and none aborted. Raises ``RuntimeError`` otherwise: dropping an unfinished
    problem would silently bias the sample towards short runs.
    """
    ordered = sorted(completions, key=lambda c: c.key)
    keys = sorted([c.key for c in ordered] + list(recorded))
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


def _interleave(sets: list[list[Problem]]) -> list[Problem]:
    """Round-robin over the sets, each in file order."""
    longest = max((len(s) for s in sets), default=0)
    return [s[i] for i in range(longest) for s in sets if i < len(s)]
