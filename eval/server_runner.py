"""Run a sweep's jobs through a running sidecar over gRPC (``lil-eval sweep --server ADDR``).

The prompt goes as token ids, so the server sees exactly the tokens the in-process run would;
``concurrency`` streams run at once and the server batches them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from eval.completion import Completion, Job, answer_bound
from eval.dense import is_dense
from eval.records import GuardianOnline
from lil_sparse.options import RequestOptions


def _client_options(options: RequestOptions) -> dict[str, Any]:
    sparse, guardian = options.sparse, options.guardian
    values: dict[str, Any] = {
        "temperature": options.sampling.temperature,
        "max_new_tokens": options.stopping.max_new_tokens,
        "policy": sparse.policy,
        "guardian": guardian.enabled,
        "return_token_ids": True,
        "return_guardian_trace": True,
    }
    if not is_dense(sparse.policy):
        values["budget_tokens"] = sparse.budget_tokens
    if guardian.enabled:
        values["guardian_interval_tokens"] = guardian.interval_tokens
        values["guardian_threshold_bytes"] = guardian.threshold_bytes
        values["guardian_mode"] = guardian.mode
        values["guardian_source"] = guardian.source
        values["guardian_action"] = guardian.action
        values["guardian_answer_max_tokens"] = guardian.answer_max_tokens
    return values


def completion_from_summary(key: int, summary: Any, options: RequestOptions) -> Completion:
    """A client :class:`lil_client.Summary` -> :class:`Completion`."""
    g, interval = summary.guardian, options.guardian.interval_tokens
    return Completion(
        key=key,
        prompt_tokens=summary.prompt_tokens,
        output_token_ids=tuple(summary.token_ids),
        output_text=summary.text,
        finish_reason=summary.finish_reason,
        ttft_seconds=summary.timings.ttft_seconds,
        decode_seconds=summary.timings.decode_seconds,
        jct_seconds=summary.timings.jct_seconds,
        queue_seconds=summary.timings.queue_seconds,
        mean_attended_pages=summary.kv.mean_attended_pages,
        peak_kv_pages=summary.kv.peak_pages,
        guardian=GuardianOnline(
            enabled=g.enabled,
            interval_tokens=interval if g.enabled else 0,
            threshold_bytes=options.guardian.threshold_bytes if g.enabled else 0,
            stop_step=g.stop_step,
            applied_at_step=g.applied_at_step,
            # Checks run at every multiple of the interval, so the trace's i-th size is at (i+1)*interval.
            checks_generated_tokens=tuple(interval * (i + 1) for i in range(len(g.compressed_bytes))),
            checks_compressed_bytes=tuple(g.compressed_bytes),
            action=options.guardian.action,
            answer_max_tokens=answer_bound(options),
            answer_started_at=g.answer_started_at,
            answer_prompt_tokens=g.answer_prompt_tokens,
            answer_tokens=g.answer_tokens,
        ),
    )


def run_on_server(
    address: str,
    jobs: Sequence[Job],
    options_for: Callable[[Job], RequestOptions],
    concurrency: int = 64,
    timeout_seconds: float | None = None,
) -> Iterator[Completion]:
    """Yield a :class:`Completion` per job, in finishing order; a failed call raises
    :class:`lil_client.LilClientError` (status code and the server's message)."""
    from lil_client import LilClient

    def one(client: Any, job: Job) -> Completion:
        options = options_for(job)
        summary = client.complete(
            token_ids=list(job.prompt_token_ids), timeout=timeout_seconds, **_client_options(options)
        )
        return completion_from_summary(job.key, summary, options)

    with LilClient(address) as client, ThreadPoolExecutor(max(1, concurrency)) as pool:
        futures = [pool.submit(one, client, job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()
