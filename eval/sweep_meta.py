"""The meta file beside a sweep's records: how they were made, slice by slice.

Written when a slice starts (its settings, so a later ``--resume`` can check them, and the slice
marked unfinished) and again when it ends (totals over the whole file, the slice's wall time).
It is written again after every flush of records, so a slice killed before its end says how many
records it wrote and how long it ran until then, marked ``"finished": false``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.datasets import Problem
from eval.records import SampleRecord

if TYPE_CHECKING:
    from eval.sweep import SweepConfig


def start_meta(
    previous: dict[str, Any] | None,
    config: SweepConfig,
    names: tuple[str, str, str],
    dtype: str | None,
    selection: str,
    problems_selected: int,
    longest_prompt_tokens: int,
) -> dict[str, Any]:
    """The meta as a slice starts. ``previous`` is the meta of the file being resumed (None for
    a fresh sweep); ``names`` are (model, device, backend); ``dtype`` the engine's resolved dtype
    (None through a server)."""
    model_name, device_name, backend_name = names
    command = config.command or " ".join(sys.argv)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    this_slice = {
        "command": command,
        "date_utc": now,
        "host": platform.node(),
        "finished": False,
        "records_added": 0,
        "wall_seconds": 0.0,
    }
    meta: dict[str, Any] = dict(previous or {}) | {
        "command": command,
        "date_utc": now,
        "model": model_name,
        "device": device_name,
        "backend": backend_name,
        # In process the study forces exact selection; a server applies its own --selection.
        "selection": selection,
        "host": platform.node(),
        "problems_selected": problems_selected,
        # Cut at admission: every problem that started ran under every condition.
        "admission_cut": True,
        "longest_prompt_tokens": longest_prompt_tokens,
        "config": {k: v for k, v in asdict(config).items() if k not in ("data_dir", "conditions", "datasets")}
        | {
            "datasets": [f"{d.name}:{d.limit or 'all'}" for d in config.datasets],
            "conditions": [c.label() for c in config.conditions],
        },
        "slices": [*_slices(previous), this_slice],
    }
    if dtype is not None:
        meta["dtype"] = dtype
    for name, empty in (
        ("records", 0),
        ("problems_run", 0),
        ("problems_run_per_set", {}),
        ("generated_tokens", 0),
    ):
        meta.setdefault(name, empty)  # a fresh sweep until its first slice ends
    return meta


def finish_meta(
    meta: dict[str, Any],
    records: list[SampleRecord],
    problems: list[Problem],
    conditions: int,
    wall_seconds: float,
    added: int,
) -> None:
    """Complete ``meta`` in place once a slice ended: ``records`` are all the file holds (whole
    problems, a prefix of ``problems``), ``added`` of them by this slice in ``wall_seconds``."""
    record_progress(meta, added, wall_seconds)
    slices = meta["slices"]
    slices[-1]["finished"] = True
    whole = len(records) // conditions
    meta |= {
        "records": len(records),
        "problems_run": whole,
        "problems_run_per_set": problems_run_per_set(problems[:whole]),
        # A killed slice counts up to its last write.
        "sweep_wall_seconds": round(sum(s.get("wall_seconds") or 0.0 for s in slices), 1),
        "generated_tokens": sum(r.output_tokens for r in records),
    }


def record_progress(meta: dict[str, Any], added: int, wall_seconds: float) -> None:
    """The running slice has written ``added`` records in ``wall_seconds`` so far."""
    meta["slices"][-1] |= {"wall_seconds": round(wall_seconds, 1), "records_added": added}


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` as JSON atomically: a kill leaves the old file or the new one, never half."""
    staged = path.parent / f".{path.name}.new"
    staged.write_text(json.dumps(meta, indent=2))
    os.replace(staged, path)


def _slices(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The slices so far; a meta written before slices existed was one finished slice."""
    if previous is None:
        return []
    if "slices" in previous:
        return list(previous["slices"])
    return [
        {
            "command": previous.get("command"),
            "date_utc": previous.get("date_utc"),
            "host": previous.get("host"),
            "finished": True,
            "wall_seconds": previous.get("sweep_wall_seconds"),
            "records_added": previous.get("records"),
        }
    ]


def problems_run_per_set(problems: list[Problem]) -> dict[str, dict[str, Any]]:
    """Per dataset: how many problems ran and their ids, in file order."""
    per_set: dict[str, dict[str, Any]] = {}
    for problem in problems:
        entry = per_set.setdefault(problem.dataset, {"count": 0, "positions": [], "ids": []})
        entry["count"] += 1
        entry["positions"].append(problem.position)
        entry["ids"].append(problem.problem_id)
    return per_set
