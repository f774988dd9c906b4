"""Run a sweep's jobs through the engine in-process, batched.

Jobs are fed so that about one batch waits behind the running one: the engine keeps its batch
full while queueing (which the engine counts in JCT) stays bounded. Requests of different
policies and budgets share batches; the engine handles per-request policies.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence

from eval.completion import Completion, Job, answer_bound
from eval.records import GuardianOnline
from lil_sparse.engine import LLMEngine
from lil_sparse.events import RequestReport
from lil_sparse.options import RequestOptions

PROGRESS_SECONDS = 30.0


def completion_from_report(key: int, report: RequestReport, options: RequestOptions) -> Completion:
    guardian = report.guardian
    return Completion(
        key=key,
        prompt_tokens=report.prompt_tokens,
        output_token_ids=tuple(report.output_token_ids),
        output_text=report.output_text,
        finish_reason=report.finish_reason.value,
        ttft_seconds=report.timings.ttft_seconds,
        decode_seconds=report.timings.decode_seconds,
        jct_seconds=report.timings.jct_seconds,
        queue_seconds=report.timings.queue_seconds,
        mean_attended_pages=report.kv.mean_attended_pages,
        peak_kv_pages=report.kv.peak_pages,
        guardian=GuardianOnline(
            enabled=guardian.enabled,
            interval_tokens=options.guardian.interval_tokens if guardian.enabled else 0,
            threshold_bytes=options.guardian.threshold_bytes if guardian.enabled else 0,
            stop_step=guardian.stop_step,
            applied_at_step=guardian.applied_at_step,
            checks_generated_tokens=tuple(c.generated_tokens for c in guardian.checks),
            checks_compressed_bytes=tuple(c.compressed_bytes for c in guardian.checks),
            action=options.guardian.action,
            answer_max_tokens=answer_bound(options),
            answer_started_at=guardian.answer_started_at,
            answer_prompt_tokens=guardian.answer_prompt_tokens,
            answer_tokens=guardian.answer_tokens,
        ),
    )


def run_on_engine(
    engine: LLMEngine,
    jobs: Sequence[Job],
    options_for: Callable[[Job], RequestOptions],
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    stop_after_seconds: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> Iterator[Completion]:
    """Yield a :class:`Completion` per job, in finishing order.

    ``stop_after_seconds > 0`` cuts the run at *admission*: a problem is admitted when its first
    job is submitted; once the limit has passed (by ``clock``, in seconds) no new problem is
    admitted, while every job of an admitted problem still runs to its normal end. Nothing is
    ever aborted, so the problems that ran are a prefix of ``jobs``' problems, each under every
    condition, and the long runs are never the ones dropped (no survivorship). Leave room after
    the limit for the admitted problems to finish (up to ``max_new_tokens`` of decoding).
    """
    pending = list(reversed(jobs))  # pop() from the end keeps submission in input order
    running: dict[str, tuple[Job, RequestOptions]] = {}
    admitted: set[int] = set()
    # A little more than a batch: the next prefill is ready, and a time limit wastes little.
    queue_depth = engine.config.max_batch_size + max(8, engine.config.max_batch_size // 4)
    started = last_log = clock()
    done = generated = 0
    cut = False
    while pending or running:
        if stop_after_seconds and not cut and clock() - started > stop_after_seconds:
            cut = True
            kept = [job for job in pending if job.problem in admitted]
            log(
                f"[lil-eval] time limit reached: no new problem admitted ({len(admitted)} admitted); "
                f"{len(pending) - len(kept)} jobs dropped, {len(running) + len(kept)} still to finish"
            )
            pending = kept
        while pending and len(running) < queue_depth:
            job = pending.pop()
            admitted.add(job.problem)
            options = options_for(job)
            request_id = engine.add_request(list(job.prompt_token_ids), options, request_id=f"job-{job.key}")
            running[request_id] = (job, options)
        for event in engine.step():
            generated += len(event.token_ids)
            if event.report is None:
                continue
            job, options = running.pop(event.request_id)
            done += 1
            yield completion_from_report(job.key, event.report, options)
        now = clock()
        if now - last_log >= PROGRESS_SECONDS:
            last_log = now
            rate = generated / (now - started)
            log(f"[lil-eval] {done}/{len(jobs)} done, {generated} tokens, {rate:.0f} tokens/s")
