"""What no other engine reports: how much KV sparse decode skipped and what early stops saved.

- ``lil_sparse_attended_kv_fraction{model,policy}``: per finished request, the KV pages its
  decode steps attended over the pages dense attention would have read (1.0 for ``full``).
  At decode step ``k`` the context holds ``prompt_tokens + k + 1`` tokens, so dense reads
  ``ceil((prompt_tokens + k + 1) / page_size)`` pages per KV head and layer.
- ``lil_sparse_early_stops_total{model,policy,signal}``: requests by the stop signal that
  ended them: finish reason ``eos``, ``stop_string``, or ``early_stop`` as ``guardian``
  (``length``, ``aborted`` and ``error`` are not counted). A Guardian stop counts exactly when
  the request finishes with ``early_stop`` (with action ``answer`` too, whatever ended the
  answer), so ``signal="guardian"`` equals ``lil_sparse_requests_finished_total{finish_reason=
  "early_stop"}``; a shadow Guardian, which never stops, never counts. This is the one series of
  Guardian stops (``lil_sparse_guardian_early_stops_total`` counted the same and was removed).
- ``lil_sparse_guardian_tokens_saved_total{model,policy}``: for Guardian stops,
  ``max_new_tokens - completion_tokens``, the most the request could still have generated (an
  upper bound: it might have ended sooner on its own).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from lil_sparse.events import FinishReason, RequestReport

PREFIX = "lil_sparse"
FRACTION_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
EARLY_STOP_SIGNAL: dict[FinishReason, str] = {
    FinishReason.EOS: "eos",
    FinishReason.STOP_STRING: "stop_string",
    FinishReason.EARLY_STOP: "guardian",
}


def attended_kv_fraction(report: RequestReport, page_size: int) -> float | None:
    """Attended over dense pages summed over decode steps; None without decode steps."""
    attended = report.kv.attended_pages_per_step
    if not attended:
        return None
    dense = sum(-(-(report.prompt_tokens + step + 1) // page_size) for step in range(len(attended)))
    return sum(attended) / dense


class SavingsMetrics:
    """The savings series of one server; ``observe_finished`` runs on the engine thread."""

    def __init__(self, registry: CollectorRegistry, model: str, page_size: int) -> None:
        self.model = model
        self.page_size = page_size
        by_policy = ("model", "policy")
        self.attended_kv_fraction = Histogram(
            f"{PREFIX}_attended_kv_fraction", "Attended KV pages over dense KV pages, per request.",
            by_policy, buckets=FRACTION_BUCKETS, registry=registry,
        )  # fmt: skip
        self.early_stops = Counter(
            f"{PREFIX}_early_stops", "Requests that ended before max_new_tokens, by signal.",
            ("model", "policy", "signal"), registry=registry,
        )  # fmt: skip
        self.guardian_tokens_saved = Counter(
            f"{PREFIX}_guardian_tokens_saved", "max_new_tokens minus generated tokens of Guardian stops.",
            by_policy, registry=registry,
        )  # fmt: skip

    def observe_finished(self, report: RequestReport, policy: str, max_new_tokens: int) -> None:
        labels = {"model": self.model, "policy": policy}
        fraction = attended_kv_fraction(report, self.page_size)
        if fraction is not None:
            self.attended_kv_fraction.labels(**labels).observe(fraction)
        signal = EARLY_STOP_SIGNAL.get(report.finish_reason)
        if signal is not None:
            self.early_stops.labels(signal=signal, **labels).inc()
        if report.finish_reason is FinishReason.EARLY_STOP:
            self.guardian_tokens_saved.labels(**labels).inc(max(0, max_new_tokens - report.completion_tokens))
