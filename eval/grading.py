"""Grade an answer against the gold one with math-verify (as the Lil paper's harness does)."""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Grade:
    """``correct``: math-verify's verdict; ``extracted``: what it read as the model's final answer."""

    correct: bool
    extracted: str


def grading_available() -> bool:
    """math-verify is an optional dependency (the ``eval`` extra); records made without it keep
    ``correct=None`` and ``lil-eval report`` grades them."""
    return importlib.util.find_spec("math_verify") is not None


def grade(output_text: str, gold: str) -> Grade:
    """Parse the gold answer (wrapped in ``\\boxed{}``, as SOURCES.md checked) and the output's
    final answer, and compare them symbolically. Never raises on odd text: unparsable is wrong."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}")
        predicted = parse(output_text)
        # math-verify's verify is asymmetric: gold first.
        return Grade(bool(verify(gold_parsed, predicted)), str(predicted[-1]) if predicted else "")
    except Exception:  # math-verify raises for pathological LaTeX; that answer is simply wrong
        return Grade(False, "")


def grading_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers exit when the process that made it dies: a sweep killed
    (SIGKILL, a session's end) must not leave them waiting for work forever."""
    return ProcessPoolExecutor(workers, initializer=_exit_with_parent, initargs=(os.getpid(),))


def _exit_with_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _grade_pair(pair: tuple[str, str]) -> Grade:
    return grade(*pair)


def grade_many(pairs: list[tuple[str, str]], workers: int = 0, pool: Executor | None = None) -> list[Grade]:
    """Grade ``(output_text, gold)`` pairs in input order; ``workers > 1`` uses that many
    processes (each grade is 10-20 ms of sympy, and math-verify's timeouts need a main thread
    per process), ``pool`` an existing process pool (a sweep grades as it goes, with one pool)."""
    if pool is not None:
        return list(pool.map(_grade_pair, pairs))
    if workers <= 1 or len(pairs) < 2 * workers:
        return [grade(text, gold) for text, gold in pairs]
    with ProcessPoolExecutor(workers) as new_pool:
        return list(new_pool.map(_grade_pair, pairs, chunksize=max(1, len(pairs) // (8 * workers))))
