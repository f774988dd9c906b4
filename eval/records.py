"""One JSONL record per sample, and reading/writing them (``.gz`` files are gzip-compressed).

A record holds everything the report needs, so ``docs/results/`` can be regenerated from the
records alone (no model, no tokenizer): the output text, its length, the grade, the engine's
timings and KV use, Guardian's online report, and a Guardian trajectory for offline replay.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from eval.dense import is_dense
from lil_sparse.options import POLICY_NAMES

RECORD_VERSION = 1
FINISH_REASONS = ("length", "eos", "stop_string", "early_stop", "aborted")


@dataclass(frozen=True, slots=True)
class Trajectory:
    """Guardian's view of one output, every ``base_interval`` generated tokens.

    Entry ``i`` is after ``i * base_interval`` tokens (entry 0 is the prompt alone):
    ``compressed_bytes[i]`` is the zlib size (level 6) of the whole sequence, and
    ``text_chars[i]`` the length of the output text at that point, so an output cut there is
    ``output_text[:text_chars[i]]``. Replaying any interval that is a multiple of
    ``base_interval`` and any threshold needs nothing else (see :mod:`eval.guardian_replay`).
    """

    base_interval: int
    compressed_bytes: tuple[int, ...]
    text_chars: tuple[int, ...]
    source: str = "text"
    mode: str = "full"

    def __post_init__(self) -> None:
        if self.base_interval < 1:
            raise ValueError(f"base_interval: must be >= 1, got {self.base_interval}")
        if len(self.compressed_bytes) != len(self.text_chars) or not self.compressed_bytes:
            raise ValueError("compressed_bytes: must be non-empty and as long as text_chars")


@dataclass(frozen=True, slots=True)
class GuardianOnline:
    """Guardian as it ran inside the engine (``enabled`` False when the request had it off).

    ``action`` is what a stop did; with ``answer``, ``answer_started_at`` is the output length
    when the answer prompt was appended (the thinking tokens; None without a stop), followed by
    ``answer_prompt_tokens`` forced and ``answer_tokens`` generated tokens.
    """

    enabled: bool = False
    interval_tokens: int = 0
    threshold_bytes: int = 0
    stop_step: int | None = None
    applied_at_step: int | None = None
    checks_generated_tokens: tuple[int, ...] = ()
    checks_compressed_bytes: tuple[int, ...] = ()
    action: str = "truncate"
    answer_max_tokens: int = 0  # the request's bound on a forced answer (0 with truncate)
    answer_started_at: int | None = None
    answer_prompt_tokens: int = 0
    answer_tokens: int = 0


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One problem run under one condition (policy, budget, online Guardian setting).

    ``budget_tokens`` is 0 for ``full``. Seconds come from the engine (``time.perf_counter``);
    ``service_seconds`` is JCT minus queueing, the fair comparison inside one shared batch.
    ``correct`` is None until graded. ``problem_position`` is the problem's 0-based place in its
    dataset file (-1 in records written before it was kept).
    """

    dataset: str
    problem_id: str
    model: str
    device: str
    backend: str
    policy: str
    budget_tokens: int
    max_new_tokens: int
    prompt_tokens: int
    output_tokens: int
    output_text: str
    gold: str
    finish_reason: str
    ttft_seconds: float
    decode_seconds: float
    jct_seconds: float
    queue_seconds: float
    mean_attended_pages: float
    peak_kv_pages: int
    guardian: GuardianOnline = field(default_factory=GuardianOnline)
    trajectory: Trajectory | None = None
    correct: bool | None = None
    extracted_answer: str = ""
    output_token_ids: tuple[int, ...] = ()
    problem_position: int = -1
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(
                f"finish_reason: must be one of {', '.join(FINISH_REASONS)}, got {self.finish_reason!r}"
            )
        if self.output_tokens < 0 or self.prompt_tokens < 1:
            raise ValueError("output_tokens: must be >= 0 and prompt_tokens >= 1")
        if self.policy in POLICY_NAMES and is_dense(self.policy) and self.budget_tokens != 0:
            raise ValueError(f"budget_tokens: must be 0 for policy {self.policy}, got {self.budget_tokens}")

    @property
    def service_seconds(self) -> float:
        return self.jct_seconds - self.queue_seconds

    @property
    def condition(self) -> tuple[str, int, int, int, str]:
        """(policy, budget, online Guardian interval, threshold, stop action); Guardian off gives
        zeros and an empty action."""
        g = self.guardian
        return (
            self.policy,
            self.budget_tokens,
            g.interval_tokens if g.enabled else 0,
            g.threshold_bytes if g.enabled else 0,
            g.action if g.enabled else "",
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @staticmethod
    def from_dict(row: dict[str, Any]) -> SampleRecord:
        known = {f.name for f in fields(SampleRecord)}
        values = {k: v for k, v in row.items() if k in known}
        guardian: dict[str, Any] = values.get("guardian") or {}
        values["guardian"] = GuardianOnline(**_lists_to_tuples(guardian))
        trajectory: dict[str, Any] | None = values.get("trajectory")
        if trajectory is not None:
            values["trajectory"] = Trajectory(**_lists_to_tuples(trajectory))
        values["output_token_ids"] = tuple(values.get("output_token_ids", ()))
        return SampleRecord(**values)


def _lists_to_tuples(values: dict[str, Any]) -> dict[str, Any]:
    # JSON has no tuples; the frozen dataclasses hold tuples so records compare and hash by value.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return path.open(mode, encoding="utf-8")


def write_records(path: str | Path, records: Iterable[SampleRecord], append: bool = False) -> int:
    """Write records as JSONL (gzip if the name ends in .gz); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with _open(path, "a" if append else "w") as out:
        for record in records:
            out.write(record.to_json() + "\n")
            count += 1
    return count


def read_records(*paths: str | Path) -> Iterator[SampleRecord]:
    """Records from each file in order; raises naming the file and line for a bad one."""
    for path in map(Path, paths):
        with _open(path, "r") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield SampleRecord.from_dict(json.loads(line))
                except (json.JSONDecodeError, TypeError, ValueError) as error:
                    raise ValueError(f"records: {path}:{number}: {error}") from error


@dataclass(frozen=True, slots=True)
class RecoveredRecords:
    """A records file as a killed sweep may have left it. ``torn`` says what was dropped ("" when
    the file was intact); ``needs_rewrite`` is True when appending to it as it stands would
    corrupt it (a dropped line, a last line without its newline, or a cut gzip stream)."""

    records: list[SampleRecord]
    torn: str
    needs_rewrite: bool


def read_records_for_resume(path: str | Path) -> RecoveredRecords:
    """The records of ``path``, tolerating exactly what a kill leaves: one unparsable last line
    (a record cut mid-write) and, for ``.gz``, a compressed stream cut short.

    Raises ``ValueError`` naming the file and line for anything else: an unparsable line that is
    not the last, a line that parses but is not a valid record, invalid UTF-8 before the last
    line, or gzip data that is corrupt rather than cut (zlib checks every member's CRC).
    """
    path = Path(path)
    raw = path.read_bytes()
    data, cut = _gunzip_cut_tolerant(raw, path) if path.suffix == ".gz" else (raw, False)
    lines = data.split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records: list[SampleRecord] = []
    torn = ""
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            if index != last:
                raise ValueError(f"records: {path}:{index + 1}: {error}") from error
            torn = f"line {index + 1} ({len(line)} bytes) is cut short: {error}"
            continue
        try:
            records.append(SampleRecord.from_dict(row))
        except (TypeError, ValueError) as error:
            raise ValueError(f"records: {path}:{index + 1}: {error}") from error
    if cut and not torn:
        torn = "the gzip stream is cut short after the last whole line"
    return RecoveredRecords(records, torn, bool(torn) or (last >= 0 and bool(lines[-1].strip())))


def _gunzip_cut_tolerant(raw: bytes, path: Path) -> tuple[bytes, bool]:
    """Decompress every gzip member of ``raw`` (each append writes one); returns the bytes and
    whether the last member was cut short. A corrupt member raises ``ValueError``."""
    out: list[bytes] = []
    while raw.strip(b"\0"):  # a crash can leave zero padding at the end, as gzip itself allows
        member = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer, CRC checked
        try:
            out.append(member.decompress(raw))
        except zlib.error as error:
            raise ValueError(f"records: {path}: corrupt gzip data ({error})") from error
        if not member.eof:
            return b"".join(out), True
        raw = member.unused_data
    return b"".join(out), False


def replace_records(path: str | Path, records: Iterable[SampleRecord]) -> int:
    """Rewrite ``path`` with ``records`` atomically (a kill leaves the old file or the new one)."""
    path = Path(path)
    staged = path.parent / f".{path.name}.rewrite{''.join(path.suffixes[-1:])}"
    count = write_records(staged, records)
    os.replace(staged, path)
    return count
