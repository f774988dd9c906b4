"""One request's state inside the engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

from lil_sparse.events import FinishReason, GuardianReport, KVReport, RequestReport, Timings
from lil_sparse.options import RequestOptions


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class Sequence:
    """Host-side state of a request. Page ids live on the device (the block table); the host
    knows only how many pages each KV head holds, which is all the scheduler needs."""

    request_id: str
    prompt_token_ids: list[int]
    options: RequestOptions
    budget_pages: int
    sink_pages: int
    recent_pages: int
    reserved_pages: int  # one-head pages the scheduler set aside for this request's lifetime
    arrival_time: float = field(default_factory=time.perf_counter)
    status: SequenceStatus = SequenceStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    output_text: str = ""  # the text the client was sent (final once the request finished)
    slot: int = -1  # block-table row
    held_pages: int = 0  # pages held per KV head
    num_cached_tokens: int = 0  # tokens whose K/V is in the cache
    finish_reason: FinishReason | None = None
    abort_requested: bool = False
    prefill_start_time: float = 0.0
    token_times: list[float] = field(default_factory=list)
    guardian_report: GuardianReport = field(default_factory=GuardianReport)
    kv_report: KVReport = field(default_factory=KVReport)

    @property
    def policy(self) -> str:
        return self.options.sparse.policy

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def next_position(self) -> int:
        """Position of the token fed to the next decode step (the last sampled one)."""
        return self.num_cached_tokens

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1]

    def keep_outputs(self, count: int) -> None:
        """Drop every output token after the first ``count`` (tokens held back behind a Guardian
        stop, or not released before an abort or error), with their times and decode steps (the
        first token comes from prefill, token ``i + 1`` from decode step ``i``)."""
        del self.output_token_ids[count:]
        del self.token_times[count:]
        del self.kv_report.attended_pages_per_step[max(0, count - 1) :]

    def report(self, reason: FinishReason, error: str = "") -> RequestReport:
        """The final report, once the sequence has finished with ``reason``."""
        self.finish_reason = reason
        return RequestReport(
            request_id=self.request_id,
            finish_reason=reason,
            prompt_tokens=self.num_prompt_tokens,
            completion_tokens=self.num_output_tokens,
            output_token_ids=list(self.output_token_ids),
            output_text=self.output_text,
            timings=self.timings(),
            guardian=self.guardian_report,
            kv=self.kv_report,
            error=error,
        )

    def timings(self) -> Timings:
        first = self.token_times[0] if self.token_times else self.arrival_time
        last = self.token_times[-1] if self.token_times else self.arrival_time
        gaps = [b - a for a, b in zip(self.token_times[:-1], self.token_times[1:], strict=True)]
        return Timings(
            queue_seconds=max(0.0, (self.prefill_start_time or first) - self.arrival_time),
            ttft_seconds=first - self.arrival_time,
            decode_seconds=last - first,
            jct_seconds=last - self.arrival_time,
            inter_token_seconds=gaps,
        )
