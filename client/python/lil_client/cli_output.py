"""What ``lil-client`` prints: the summary after a stream, the lines its output flags ask for,
the ``--json`` object, and ``info``'s text. Pure functions of the server's answers."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from lil_client._proto.lil_sparse.v1 import options_pb2, service_pb2
from lil_client.types import Summary


def format_summary(summary: Summary) -> str:
    """The human summary printed after the streamed text."""
    t, g, kv = summary.timings, summary.guardian, summary.kv
    if g.enabled and g.shadow:
        stop = f", would stop at token {g.stop_step}" if g.stop_step is not None else ", would not stop"
        guardian = f"shadow, {g.checks} checks{stop}, {g.cpu_seconds * 1e3:.2f} ms CPU"
    elif g.enabled:
        stop = (
            f", stop at token {g.stop_step} (applied {g.applied_at_step})" if g.stop_step is not None else ""
        )
        if g.answer_started_at is not None:
            stop += f", answer: {g.answer_prompt_tokens} prompt + {g.answer_tokens} tokens"
        guardian = f"on, {g.checks} checks{stop}, {g.cpu_seconds * 1e3:.2f} ms CPU"
    else:
        guardian = "off"
    return "\n".join(
        (
            f"finish: {summary.finish_reason}",
            f"tokens: prompt {summary.prompt_tokens}, completion {summary.completion_tokens}",
            f"ttft: {t.ttft_seconds * 1e3:.1f} ms  tbt: mean {t.tbt_mean_seconds * 1e3:.2f} ms, "
            f"p50 {t.tbt_p50_seconds * 1e3:.2f} ms, p95 {t.tbt_p95_seconds * 1e3:.2f} ms  "
            f"jct: {t.jct_seconds * 1e3:.1f} ms",
            f"guardian: {guardian}",
            # peak_pages counts one-head pages over all KV heads, mean_attended_pages per KV head
            # (report.proto); the budget, in pages, compares with the second.
            f"kv: peak {kv.peak_pages} pages (all KV heads), "
            f"{kv.mean_attended_pages:.1f} pages attended per step and KV head",
        )
    )


def format_outputs(summary: Summary, args: argparse.Namespace) -> str:
    """The lines the output flags and ``--request-id`` ask for, printed after the summary ("" if none)."""
    lines = []
    if args.request_id is not None:
        lines.append(f"request: {summary.request_id}")
    if args.return_token_ids:
        lines.append("token ids: " + " ".join(str(token) for token in summary.token_ids))
    if args.return_logprobs:
        lines.append("logprobs: " + " ".join(f"{logprob:.4f}" for logprob in summary.logprobs))
    if args.return_guardian_trace:
        lines.append(f"guardian trace: {len(summary.guardian.trace)} checks")
        for check in summary.guardian.trace:
            growth = "first check" if check.growth_bytes is None else f"{check.growth_bytes:+d} bytes"
            verdict = "stop" if check.stop else "go on"
            lines.append(
                f"  token {check.generated_tokens}: {check.compressed_bytes} bytes, {growth}, "
                f"{verdict}, {check.cpu_seconds * 1e3:.2f} ms CPU"
            )
    return "".join(line + "\n" for line in lines)


def summary_dict(summary: Summary, with_logprobs: bool = False) -> dict[str, Any]:
    """The ``--json`` object: the Summary's fields, ``logprobs`` (NaN as null, for valid JSON)
    only ``with_logprobs``."""
    data = dataclasses.asdict(summary)
    data.pop("started")
    data["text"] = summary.text
    logprobs = data.pop("logprobs")
    if with_logprobs:
        data["logprobs"] = [None if math.isnan(logprob) else logprob for logprob in logprobs]
    return data


def format_info(info: service_pb2.GetInfoResponse) -> str:
    """The human ``info`` output: the served model, limits, policies and defaults."""
    return (
        f"model: {info.model} ({info.architecture})\n"
        f"context: {info.max_context} tokens, page size {info.page_size}, {info.num_layers} layers\n"
        f"backend: {info.backend}, {info.num_pages_total} KV pages\n"
        f"policies: {', '.join(p.name for p in info.policies)}\n"
        f"limits: {info.limits.max_running} running, {info.limits.max_waiting} waiting, "
        f"max_new_tokens up to {info.limits.max_new_tokens_limit}\n"
        f"selection: {info.selection or 'exact'}; overlap scheduling: "
        f"{'on' if info.overlap_scheduling else 'off'}; warm-up: "
        f"{f'{info.warm_up_seconds:.1f} s' if info.warm_up_seconds else 'off'}\n"
        + format_defaults(info.default_options)
        + f"server: {info.server_version}\n"
    )


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    """``GUARDIAN_MODE_FULL`` -> ``full``; ``unspecified`` if the server left it unset."""
    return str(enum.Name(value)).removeprefix(prefix).lower()


def format_defaults(options: options_pb2.ResolvedOptions) -> str:
    """The options a request gets when it sets none, as ``info`` prints them (three lines)."""
    sampling, stopping, sparse, g = options.sampling, options.stopping, options.sparse, options.guardian
    policy = _enum_name(options_pb2.Policy, sparse.policy, "POLICY_")
    guardian = "on" if g.enabled else "off"
    return (
        f"defaults: policy {policy}, budget {sparse.budget_tokens} tokens (full ignores it), "
        f"sink {sparse.sink_tokens}, recent {sparse.recent_tokens} (0: auto), "
        f"dense layers {sparse.dense_layers}\n"
        f"  max_new_tokens {stopping.max_new_tokens}, temperature {sampling.temperature:g}, "
        f"top_k {sampling.top_k}, top_p {sampling.top_p:g}, ignore_eos {str(stopping.ignore_eos).lower()}\n"
        f"  guardian {guardian}: interval {g.interval_tokens} tokens, threshold {g.threshold_bytes} bytes, "
        f"mode {_enum_name(options_pb2.GuardianMode, g.mode, 'GUARDIAN_MODE_')}, "
        f"action {_enum_name(options_pb2.GuardianAction, g.action, 'GUARDIAN_ACTION_')}\n"
    )
