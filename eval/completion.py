"""What a backend (the in-process engine or a sidecar over gRPC) returns for one sample."""

from __future__ import annotations

from dataclasses import dataclass

from eval.records import GuardianOnline
from lil_sparse.options import RequestOptions


@dataclass(frozen=True, slots=True)
class Job:
    """One request of a sweep: ``key`` indexes the (problem, condition) pair it belongs to and
    ``problem`` the problem alone (jobs of one problem are admitted together, see
    :func:`eval.engine_runner.run_on_engine`)."""

    key: int
    prompt_token_ids: tuple[int, ...]
    problem: int = 0


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished request, backend-neutral. Seconds as measured by the engine."""

    key: int
    prompt_tokens: int
    output_token_ids: tuple[int, ...]
    output_text: str
    finish_reason: str
    ttft_seconds: float
    decode_seconds: float
    jct_seconds: float
    queue_seconds: float
    mean_attended_pages: float
    peak_kv_pages: int
    guardian: GuardianOnline


def answer_bound(options: RequestOptions) -> int:
    """``GuardianOnline.answer_max_tokens`` of a request: the bound on a forced answer, 0 when a
    Guardian stop truncates."""
    return options.guardian.answer_max_tokens if options.guardian.action == "answer" else 0
