"""Math problem sets as JSONL, one ``{"id", "problem", "answer", ...}`` per line.

The schema and the four sets are described in ../shared/data/SOURCES.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "LIL_DATA_DIR"
KNOWN_DATASETS: tuple[str, ...] = ("gsm8k", "math500", "aime24", "aime25")


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem; ``answer`` is the gold final answer as a string (graded with math-verify).
    ``position`` is its 0-based place among the problems of its file (-1: not from a file)."""

    dataset: str
    problem_id: str
    problem: str
    answer: str
    position: int = -1

    def __post_init__(self) -> None:
        for name in ("dataset", "problem_id", "problem", "answer"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}: must be a non-empty string")


@dataclass(frozen=True, slots=True)
class DatasetSelection:
    """A dataset and how many of its first problems to use (``limit == 0``: all)."""

    name: str
    limit: int = 0

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"dataset: {self.name!r} must be a file stem like gsm8k (no path)")
        if self.limit < 0:
            raise ValueError(f"limit: must be >= 0 (0: all problems), got {self.limit}")

    @staticmethod
    def parse(spec: str) -> DatasetSelection:
        """``"gsm8k:200"`` -> the first 200 GSM8K problems; ``"aime24"`` -> all of AIME24."""
        name, _, limit = spec.partition(":")
        if limit.strip() in ("0", "-0"):  # 0 means "all" inside; written out, it is a mistake
            raise ValueError(f"datasets: {spec!r}: the count must be >= 1 (leave it out for every problem)")
        try:
            return DatasetSelection(name.strip(), int(limit) if limit else 0)
        except ValueError as error:
            if "limit" in str(error) or "dataset" in str(error):
                raise
            raise ValueError(f"datasets: {spec!r} is not NAME or NAME:COUNT") from error


def resolve_data_dir(flag: str | None) -> Path:
    """The ``--data-dir`` flag, else ``$LIL_DATA_DIR``; raises if neither names a folder."""
    value = flag or os.environ.get(DATA_DIR_ENV)
    if not value:
        raise ValueError(f"data_dir: pass --data-dir or set {DATA_DIR_ENV} to the folder with the JSONL sets")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(f"data_dir: {path} is not a folder")
    return path


def load_problems(data_dir: Path, selection: DatasetSelection) -> list[Problem]:
    """The first ``selection.limit`` problems of ``data_dir/<name>.jsonl`` in file order."""
    path = data_dir / f"{selection.name}.jsonl"
    if not path.is_file():
        raise ValueError(f"dataset: {path} does not exist (known sets: {', '.join(KNOWN_DATASETS)})")
    problems: list[Problem] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problems.append(
                    Problem(selection.name, str(row["id"]), row["problem"], str(row["answer"]), len(problems))
                )
            except (json.JSONDecodeError, KeyError, ValueError) as error:
                raise ValueError(
                    f"dataset: {path}:{number} is not a valid problem record ({error})"
                ) from error
            if selection.limit and len(problems) == selection.limit:
                break
    return problems
