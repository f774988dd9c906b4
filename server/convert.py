"""Conversion between the protobuf messages and the engine's types; the only module touching ``*_pb2``.

Requests become validated :class:`RequestOptions` (the prompt is ``server/prompt_input.py``'s);
engine events and reports become stream messages. Invalid input raises :class:`InvalidArgument`
naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from lil_client._proto.lil_sparse.v1 import options_pb2, report_pb2, service_pb2

from lil_sparse.events import FinishReason, RequestReport
from lil_sparse.options import POLICY_NAMES, RequestOptions, SparseOptions
from server.errors import InvalidArgument

POLICY_TO_PROTO: dict[str, Any] = {
    name: options_pb2.Policy.Value(f"POLICY_{name.upper()}") for name in POLICY_NAMES
}
PROTO_TO_POLICY: dict[int, str] = {value: name for name, value in POLICY_TO_PROTO.items()}
MODE_TO_PROTO: dict[str, Any] = {
    "full": options_pb2.GUARDIAN_MODE_FULL,
    "incremental": options_pb2.GUARDIAN_MODE_INCREMENTAL,
}
PROTO_TO_MODE = {value: name for name, value in MODE_TO_PROTO.items()}
SOURCE_TO_PROTO: dict[str, Any] = {
    "text": options_pb2.GUARDIAN_SOURCE_TEXT,
    "token_ids": options_pb2.GUARDIAN_SOURCE_TOKEN_IDS,
}
PROTO_TO_SOURCE = {value: name for name, value in SOURCE_TO_PROTO.items()}
ACTION_TO_PROTO: dict[str, Any] = {
    "truncate": options_pb2.GUARDIAN_ACTION_TRUNCATE,
    "answer": options_pb2.GUARDIAN_ACTION_ANSWER,
}
PROTO_TO_ACTION = {value: name for name, value in ACTION_TO_PROTO.items()}
FINISH_REASON_TO_PROTO: dict[FinishReason, Any] = {
    FinishReason.LENGTH: report_pb2.FINISH_REASON_LENGTH,
    FinishReason.EOS: report_pb2.FINISH_REASON_EOS,
    FinishReason.STOP_STRING: report_pb2.FINISH_REASON_STOP_STRING,
    FinishReason.EARLY_STOP: report_pb2.FINISH_REASON_EARLY_STOP,
    FinishReason.ABORTED: report_pb2.FINISH_REASON_ABORTED,
}


# Caps on what one request may send; each keeps one client from costing the server much.
MAX_REQUEST_ID_CHARS = 128
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_BYTES = 256


def _overrides(message: Any, names: Sequence[str]) -> dict[str, Any]:
    """The optional scalar fields the caller set (absent ones keep the server default)."""
    return {name: getattr(message, name) for name in names if message.HasField(name)}


def _enum_override(value: int, table: Mapping[int, str], field_name: str) -> dict[str, Any]:
    if value == 0:  # *_UNSPECIFIED: the server default
        return {}
    if value not in table:
        raise InvalidArgument(f"{field_name}: unknown enum value {value}")
    return {field_name: table[value]}


def request_id_of(request: service_pb2.GenerateRequest) -> str | None:
    """The caller's request id; None when absent or empty (the server then makes one)."""
    if not request.HasField("request_id") or request.request_id == "":
        return None
    check_request_id(request.request_id)
    return request.request_id


def check_stop_strings(stop_strings: Sequence[str]) -> None:
    """The stop list's caps (count, bytes each); INVALID_ARGUMENT naming ``stop_strings[i]``."""
    if len(stop_strings) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"stop_strings: at most {MAX_STOP_STRINGS} strings, got {len(stop_strings)}")
    for index, stop in enumerate(stop_strings):
        size = len(stop.encode("utf-8"))
        if size > MAX_STOP_STRING_BYTES:
            raise InvalidArgument(f"stop_strings[{index}]: at most {MAX_STOP_STRING_BYTES} bytes, got {size}")


def options_from_request(
    request: service_pb2.GenerateRequest, defaults: RequestOptions, max_new_tokens_limit: int
) -> RequestOptions:
    """Overlay the request's set fields on ``defaults``; raises InvalidArgument naming the field."""
    sampling, stopping = request.sampling, request.stopping
    sparse, guardian = request.sparse, request.guardian
    stopping_fields = _overrides(stopping, ("max_new_tokens", "ignore_eos"))
    if stopping.stop_strings:
        check_stop_strings(stopping.stop_strings)
        stopping_fields["stop_strings"] = tuple(stopping.stop_strings)
    sparse_fields = _overrides(sparse, ("budget_tokens", "sink_tokens", "recent_tokens", "dense_layers"))
    sparse_fields.update(_enum_override(sparse.policy, PROTO_TO_POLICY, "policy"))
    guardian_fields = _overrides(guardian, ("enabled", "interval_tokens", "threshold_bytes", "shadow"))
    guardian_fields.update(_enum_override(guardian.mode, PROTO_TO_MODE, "mode"))
    guardian_fields.update(_enum_override(guardian.source, PROTO_TO_SOURCE, "source"))
    guardian_fields.update(_overrides(guardian, ("answer_max_tokens",)))
    guardian_fields.update(_enum_override(guardian.action, PROTO_TO_ACTION, "action"))
    try:
        options = RequestOptions(
            sampling=replace(
                defaults.sampling, **_overrides(sampling, ("temperature", "top_k", "top_p", "seed"))
            ),
            stopping=replace(defaults.stopping, **stopping_fields),
            sparse=replace(defaults.sparse, **sparse_fields),
            guardian=replace(defaults.guardian, **guardian_fields),
        )
    except ValueError as error:  # the option dataclasses name the field
        raise InvalidArgument(str(error)) from None
    check_max_new_tokens(options, max_new_tokens_limit)
    return options


def check_max_new_tokens(options: RequestOptions, max_new_tokens_limit: int) -> None:
    """The server's per-request cap (fairness: slots turn over); INVALID_ARGUMENT above it."""
    if options.stopping.max_new_tokens > max_new_tokens_limit:
        raise InvalidArgument(
            f"max_new_tokens: must be <= {max_new_tokens_limit} (the server's max_new_tokens_limit), "
            f"got {options.stopping.max_new_tokens}"
        )


def check_request_id(request_id: str) -> None:
    """A caller's request id: at most MAX_REQUEST_ID_CHARS printable characters."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(
            f"request_id: must be at most {MAX_REQUEST_ID_CHARS} characters, got {len(request_id)}"
        )
    if not request_id.isprintable():
        raise InvalidArgument("request_id: must be printable text (no control characters)")


def resolved_options_message(options: RequestOptions) -> options_pb2.ResolvedOptions:
    """Every field set, every enum specified: what the request actually runs with."""
    s, st, sp, g = options.sampling, options.stopping, options.sparse, options.guardian
    message = options_pb2.ResolvedOptions(
        sampling=options_pb2.SamplingOptions(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p),
        stopping=options_pb2.StoppingOptions(
            max_new_tokens=st.max_new_tokens, stop_strings=list(st.stop_strings), ignore_eos=st.ignore_eos
        ),
        sparse=sparse_options_message(sp),
        guardian=options_pb2.GuardianOptions(
            enabled=g.enabled,
            interval_tokens=g.interval_tokens,
            threshold_bytes=g.threshold_bytes,
            mode=MODE_TO_PROTO[g.mode],
            source=SOURCE_TO_PROTO[g.source],
            shadow=g.shadow,
            action=ACTION_TO_PROTO[g.action],
            answer_max_tokens=g.answer_max_tokens,
        ),
    )
    if s.seed is not None:
        message.sampling.seed = s.seed
    return message


def sparse_options_message(sparse: SparseOptions) -> options_pb2.SparseOptions:
    return options_pb2.SparseOptions(
        policy=POLICY_TO_PROTO[sparse.policy],
        budget_tokens=sparse.budget_tokens,
        sink_tokens=sparse.sink_tokens,
        recent_tokens=sparse.recent_tokens,
        dense_layers=sparse.dense_layers,
    )


def started_response(
    request_id: str, prompt_tokens: int, options: RequestOptions
) -> service_pb2.GenerateResponse:
    started = service_pb2.Started(
        request_id=request_id, prompt_tokens=prompt_tokens, options=resolved_options_message(options)
    )
    return service_pb2.GenerateResponse(started=started)


def chunk_response(
    token_ids: Sequence[int],
    text: str,
    logprobs: Sequence[float],
    output: options_pb2.OutputOptions,
    answer_tokens: int = 0,
) -> service_pb2.GenerateResponse:
    """One chunk for one or more merged engine events (``token_ids`` and ``logprobs`` aligned);
    ``answer_tokens`` of them, the last ones, belong to a forced Guardian answer."""
    chunk = service_pb2.Chunk(token_count=len(token_ids), text=text, answer_tokens=answer_tokens)
    if output.return_token_ids:
        chunk.token_ids.extend(token_ids)
    if output.return_logprobs:
        chunk.logprobs.extend(logprobs)
    return service_pb2.GenerateResponse(chunk=chunk)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated ``q``-th percentile (0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def finished_response(
    report: RequestReport, output: options_pb2.OutputOptions
) -> service_pb2.GenerateResponse:
    timings, guardian, kv = report.timings, report.guardian, report.kv
    gaps = timings.inter_token_seconds
    guardian_message = report_pb2.GuardianReport(
        enabled=guardian.enabled,
        checks=len(guardian.checks),
        compressed_bytes=[check.compressed_bytes for check in guardian.checks],
        cpu_seconds=guardian.cpu_seconds,
        shadow=guardian.shadow,
        answer_prompt_tokens=guardian.answer_prompt_tokens,
        answer_tokens=guardian.answer_tokens,
    )
    if guardian.answer_started_at is not None:
        guardian_message.answer_started_at = guardian.answer_started_at
    if guardian.stop_step is not None:
        guardian_message.stop_step = guardian.stop_step
    if guardian.applied_at_step is not None:
        guardian_message.applied_at_step = guardian.applied_at_step
    if output.return_guardian_trace:
        for check in guardian.checks:
            record = guardian_message.trace.add(
                generated_tokens=check.generated_tokens,
                compressed_bytes=check.compressed_bytes,
                stop=check.stop,
                cpu_seconds=check.cpu_seconds,
            )
            if check.growth_bytes is not None:
                record.growth_bytes = check.growth_bytes
    finished = service_pb2.Finished(
        finish_reason=FINISH_REASON_TO_PROTO[report.finish_reason],
        usage=report_pb2.Usage(
            prompt_tokens=report.prompt_tokens, completion_tokens=report.completion_tokens
        ),
        timings=report_pb2.Timings(
            queue_seconds=timings.queue_seconds,
            ttft_seconds=timings.ttft_seconds,
            tbt_mean_seconds=sum(gaps) / len(gaps) if gaps else 0.0,
            tbt_p50_seconds=percentile(gaps, 50),
            tbt_p95_seconds=percentile(gaps, 95),
            decode_seconds=timings.decode_seconds,
            jct_seconds=timings.jct_seconds,
        ),
        guardian=guardian_message,
        kv=report_pb2.KVReport(
            peak_pages=kv.peak_pages,
            attended_pages_per_step=[float(pages) for pages in kv.attended_pages_per_step],
            mean_attended_pages=kv.mean_attended_pages,
        ),
    )
    return service_pb2.GenerateResponse(finished=finished)


def info_response(
    info: Any, defaults: RequestOptions, limits: service_pb2.Limits, server_version: str
) -> service_pb2.GetInfoResponse:
    """``info`` is the engine's EngineInfo (model_name, architecture, max_context, page_size, ...)."""
    policies = [
        service_pb2.PolicyInfo(
            policy=POLICY_TO_PROTO[name],
            name=name,
            defaults=sparse_options_message(replace(defaults.sparse, policy=name)),
            min_budget_tokens=info.page_size,
            max_budget_tokens=info.max_context,
        )
        for name in info.policies
        if name in POLICY_TO_PROTO
    ]
    return service_pb2.GetInfoResponse(
        model=str(info.model_name),
        architecture=str(info.architecture),
        max_context=info.max_context,
        page_size=info.page_size,
        num_layers=info.num_layers,
        backend=str(info.backend),
        num_pages_total=info.num_pages_total,
        policies=policies,
        default_options=resolved_options_message(defaults),
        limits=limits,
        server_version=server_version,
        selection=str(getattr(info, "selection", "exact")),
        overlap_scheduling=bool(getattr(info, "overlap_scheduling", False)),
        warm_up_seconds=float(getattr(info, "warm_up_seconds", 0.0)),
    )
