"""What the engine emits: token events while a request runs, and a report when it finishes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class FinishReason(str, Enum):
    """Why a request stopped."""

    LENGTH = "length"  # max_new_tokens reached
    EOS = "eos"  # the model emitted an end-of-sequence token
    STOP_STRING = "stop_string"  # the output contains one of the stop strings
    EARLY_STOP = "early_stop"  # Guardian: the sequence stopped carrying new information
    ABORTED = "aborted"  # the caller aborted (cancel, deadline, shutdown)
    ERROR = "error"  # handling this request failed (RequestReport.error says where); others go on


@dataclass(frozen=True, slots=True)
class GuardianCheckRecord:
    """One Guardian check: after ``generated_tokens`` tokens the sequence compressed to
    ``compressed_bytes``; ``growth_bytes`` is the change since the previous check (None on the
    first check), and ``stop`` is the verdict."""

    generated_tokens: int
    compressed_bytes: int
    growth_bytes: int | None
    stop: bool
    cpu_seconds: float


@dataclass(slots=True)
class GuardianReport:
    """Guardian's trajectory for one request.

    In shadow mode (``shadow``) ``stop_step`` is where Guardian would have stopped; the request
    went on, so ``applied_at_step`` stays None and the checks continue to the end.
    """

    enabled: bool = False
    checks: list[GuardianCheckRecord] = field(default_factory=list)
    stop_step: int | None = None  # generated-token count at the check that said stop
    # Completion tokens when the engine applied the stop: always stop_step, since tokens after
    # a pending check are held back until its verdict.
    applied_at_step: int | None = None
    cpu_seconds: float = 0.0
    shadow: bool = False  # verdicts recorded, never applied
    # Stop action "answer": output tokens before the forced answer prompt (the thinking), the
    # prompt's tokens appended, and the model's own tokens after it. None/0 without an answer.
    answer_started_at: int | None = None
    answer_prompt_tokens: int = 0
    answer_tokens: int = 0


@dataclass(slots=True)
class KVReport:
    """KV cache use of one request. Pages are one-head pages, counted over all KV heads."""

    peak_pages: int = 0
    attended_pages_per_step: list[int] = field(default_factory=list)  # per decode step, per KV head row mean
    selection_skipped_steps: int = 0  # decode steps over budget that attended densely (selection gate)

    @property
    def mean_attended_pages(self) -> float:
        steps = self.attended_pages_per_step
        return sum(steps) / len(steps) if steps else 0.0


@dataclass(slots=True)
class Timings:
    """Seconds, measured by the engine with ``time.perf_counter``."""

    queue_seconds: float = 0.0  # arrival -> prefill start
    ttft_seconds: float = 0.0  # arrival -> first token
    decode_seconds: float = 0.0  # first token -> last token
    jct_seconds: float = 0.0  # arrival -> finish
    inter_token_seconds: list[float] = field(default_factory=list)  # gaps between tokens (TBT)


@dataclass(slots=True)
class RequestReport:
    """Everything known about a request once it finished."""

    request_id: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    output_token_ids: list[int]
    output_text: str
    timings: Timings
    guardian: GuardianReport
    kv: KVReport
    error: str = ""  # finish reason ERROR: the stage that failed and the exception, for the log


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """Tokens released to one request's client in one engine step.

    Usually one token per step; more when tokens held behind a pending Guardian check are
    released together, none (only text, or nothing) on some final events. The ``text_delta``s
    of a request add up to its report's ``output_text`` and its ``token_ids`` to
    ``output_token_ids``. ``logprobs`` holds the
    log-probability of each token in ``token_ids`` under the sampling distribution's logits
    (before temperature); NaN for a forced answer-prompt token. ``answer`` is True for tokens
    after a Guardian stop with action ``answer`` (the forced prompt and the answer), False for
    the thinking before it. ``report`` is set exactly when ``finish_reason`` is.
    """

    request_id: str
    token_ids: tuple[int, ...]
    text_delta: str
    logprobs: tuple[float, ...] = ()
    finish_reason: FinishReason | None = None
    report: RequestReport | None = None
    answer: bool = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
