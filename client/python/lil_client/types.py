"""Typed results of a Generate stream: chunks while it runs, a Summary when it ends.

These are plain dataclasses built from the protobuf messages, so callers never handle ``*_pb2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from lil_client._proto.lil_sparse.v1 import report_pb2, service_pb2

FINISH_REASON_NAMES: dict[int, str] = {
    report_pb2.FINISH_REASON_LENGTH: "length",
    report_pb2.FINISH_REASON_EOS: "eos",
    report_pb2.FINISH_REASON_STOP_STRING: "stop_string",
    report_pb2.FINISH_REASON_EARLY_STOP: "early_stop",
    report_pb2.FINISH_REASON_ABORTED: "aborted",
}


class LilClientError(Exception):
    """A failed call: the gRPC status code and the server's message (e.g. "top_p: must be ...")."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Chunk:
    """New text; ``token_ids``/``logprobs`` are empty unless requested. The last
    ``answer_tokens`` tokens follow a Guardian stop with action ``answer`` (forced prompt and
    answer); the others are thinking."""

    text: str
    token_count: int
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    answer_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds, measured by the server's engine."""

    queue_seconds: float
    ttft_seconds: float
    tbt_mean_seconds: float
    tbt_p50_seconds: float
    tbt_p95_seconds: float
    decode_seconds: float
    jct_seconds: float


@dataclass(frozen=True, slots=True)
class GuardianCheck:
    """One Guardian check (``return_guardian_trace``); sizes in bytes, as the Go client's."""

    generated_tokens: int  # tokens generated when the check ran
    compressed_bytes: int  # compressed size of the sequence so far
    growth_bytes: int | None  # growth since the previous check; None on the first check
    stop: bool  # the verdict: True means stop (in shadow mode: would stop)
    cpu_seconds: float  # CPU time this check spent compressing


@dataclass(frozen=True, slots=True)
class GuardianSummary:
    enabled: bool
    checks: int
    compressed_bytes: tuple[int, ...]
    stop_step: int | None
    applied_at_step: int | None
    cpu_seconds: float
    shadow: bool = False  # stop_step is where Guardian would have stopped; it did not stop
    answer_started_at: int | None = None  # action "answer": thinking tokens before the forced prompt
    answer_prompt_tokens: int = 0  # tokens of the forced answer prompt
    answer_tokens: int = 0  # tokens the model generated after it
    trace: tuple[GuardianCheck, ...] = ()  # one record per check, with return_guardian_trace


@dataclass(frozen=True, slots=True)
class KVSummary:
    peak_pages: int
    mean_attended_pages: float
    attended_pages_per_step: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Summary:
    """Everything about a finished generation; ``text``, ``token_ids`` and ``logprobs`` are joined
    from the chunks (the last two empty unless requested; a forced Guardian answer prompt's
    logprobs are NaN)."""

    request_id: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    text: str
    timings: Timings
    guardian: GuardianSummary
    kv: KVSummary
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    chunks: int = 0  # stream messages that carried tokens (fewer than tokens when merged)
    started: service_pb2.Started | None = field(default=None, repr=False)  # holds the resolved options


def chunk_from_proto(chunk: service_pb2.Chunk) -> Chunk:
    return Chunk(
        text=chunk.text,
        token_count=chunk.token_count,
        token_ids=tuple(chunk.token_ids),
        logprobs=tuple(chunk.logprobs),
        answer_tokens=chunk.answer_tokens,
    )


def summary_from_proto(
    started: service_pb2.Started, finished: service_pb2.Finished, chunks: list[Chunk]
) -> Summary:
    t, g, kv = finished.timings, finished.guardian, finished.kv
    return Summary(
        request_id=started.request_id,
        finish_reason=FINISH_REASON_NAMES.get(finished.finish_reason, "unspecified"),
        prompt_tokens=finished.usage.prompt_tokens,
        completion_tokens=finished.usage.completion_tokens,
        text="".join(c.text for c in chunks),
        timings=Timings(
            queue_seconds=t.queue_seconds,
            ttft_seconds=t.ttft_seconds,
            tbt_mean_seconds=t.tbt_mean_seconds,
            tbt_p50_seconds=t.tbt_p50_seconds,
            tbt_p95_seconds=t.tbt_p95_seconds,
            decode_seconds=t.decode_seconds,
            jct_seconds=t.jct_seconds,
        ),
        guardian=GuardianSummary(
            enabled=g.enabled,
            checks=g.checks,
            compressed_bytes=tuple(g.compressed_bytes),
            stop_step=g.stop_step if g.HasField("stop_step") else None,
            applied_at_step=g.applied_at_step if g.HasField("applied_at_step") else None,
            cpu_seconds=g.cpu_seconds,
            shadow=g.shadow,
            answer_started_at=g.answer_started_at if g.HasField("answer_started_at") else None,
            answer_prompt_tokens=g.answer_prompt_tokens,
            answer_tokens=g.answer_tokens,
            trace=tuple(
                GuardianCheck(
                    generated_tokens=check.generated_tokens,
                    compressed_bytes=check.compressed_bytes,
                    growth_bytes=check.growth_bytes if check.HasField("growth_bytes") else None,
                    stop=check.stop,
                    cpu_seconds=check.cpu_seconds,
                )
                for check in g.trace
            ),
        ),
        kv=KVSummary(
            peak_pages=kv.peak_pages,
            mean_attended_pages=kv.mean_attended_pages,
            attended_pages_per_step=tuple(kv.attended_pages_per_step),
        ),
        token_ids=tuple(token for c in chunks for token in c.token_ids),
        logprobs=tuple(logprob for c in chunks for logprob in c.logprobs),
        chunks=len(chunks),
        started=started,
    )
