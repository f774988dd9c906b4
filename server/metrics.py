"""Prometheus metrics of one server, in its own registry (tests run several servers per process).

Names follow Prometheus conventions: base units (seconds), ``_total`` on counters. Labels are
``model``, ``policy`` and ``finish_reason``; never a request id (unbounded cardinality).
"""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from lil_sparse.events import FinishReason, RequestReport, TokenEvent
from lil_sparse.options import RequestOptions
from server.engine_loop import LoopStats
from server.savings_metrics import SavingsMetrics
from server.vllm_metrics import VllmMetrics

CANCELLED = "cancelled"  # finish_reason label of a request its client cancelled (not an engine reason)

PREFIX = "lil_sparse"
# Latency buckets in seconds: a CPU tiny model decodes in ~1 ms, a GPU batch step in ~10 ms,
# a long CPU prefill takes seconds.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_GUARDIAN_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5)


class ServerMetrics:
    """All series of one server. ``observe_finished`` runs on the engine thread."""

    def __init__(self, model: str, page_size: int = 16, model_name: str | None = None) -> None:
        self.model = model
        self.last_stats: LoopStats | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        by_policy = ("model", "policy")
        r = self.registry
        self.time_to_first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds", "Arrival to first generated token.", by_policy,
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inter_token_latency = Histogram(
            f"{PREFIX}_inter_token_latency_seconds", "Gap between consecutive generated tokens (TBT).",
            by_policy, buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e_request_latency = Histogram(
            f"{PREFIX}_e2e_request_latency_seconds", "Arrival to finish (job completion time).", by_policy,
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_time = Histogram(
            f"{PREFIX}_request_queue_time_seconds", "Arrival to prefill start.", by_policy,
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.guardian_check = Histogram(
            f"{PREFIX}_guardian_check_seconds", "CPU seconds of one Guardian compression check.", by_policy,
            buckets=_GUARDIAN_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens of finished requests.", by_policy, registry=r
        )
        self.generation_tokens = Counter(
            f"{PREFIX}_generation_tokens", "Generated tokens of finished requests.", by_policy, registry=r
        )
        self.requests_finished = Counter(
            f"{PREFIX}_requests_finished",
            "Finished requests, by finish reason; 'cancelled': aborted because the client went away.",
            ("model", "policy", "finish_reason"),
            registry=r,
        )
        self.selection_skipped_rows = Counter(
            f"{PREFIX}_selection_skipped_rows",
            "Decode steps of finished requests over their budget that attended densely because "
            "selection would have cost more than it saved (selection=when_faster).",
            by_policy,
            registry=r,
        )
        self.decode_forwards = Counter(
            f"{PREFIX}_decode_forwards",
            "Decode forwards by how they ran: a CUDA graph replayed, or eager (graphs off, or the "
            "first sight of a step shape).",
            ("model", "path"),
            registry=r,
        )
        self.sampling_steps = Counter(
            f"{PREFIX}_sampling_steps",
            "Engine steps that sampled, by scheduling: the next decode launched before this step's "
            "tokens were handled (ahead, overlap scheduling) or after (serial).",
            ("model", "scheduling"),
            registry=r,
        )
        self._step_counts = {"graph": 0, "eager": 0, "ahead": 0, "serial": 0}
        # Guardian stops are lil_sparse_early_stops_total{signal="guardian"} (savings_metrics.py);
        # lil_sparse_guardian_early_stops_total counted the same requests and was removed
        # (docs/deploy.md, "Removed series").
        self.requests_running = Gauge(
            f"{PREFIX}_requests_running",
            "Requests holding a batch slot: prefilling their prompt (chunked) or decoding.",
            ("model",),
            registry=r,
        )
        self.requests_waiting = Gauge(
            f"{PREFIX}_requests_waiting", "Requests admitted but not yet running.", ("model",), registry=r
        )
        self.kv_cache_usage = Gauge(
            f"{PREFIX}_kv_cache_usage_ratio", "Fraction of KV pages in use (0..1).", ("model",), registry=r
        )
        self.vllm = VllmMetrics(r, model_name=model_name or model)
        self.savings = SavingsMetrics(r, model=model, page_size=page_size)
        # Zero-valued children exist from the start so dashboards and tests see every series.
        for gauge in (self.requests_running, self.requests_waiting, self.kv_cache_usage):
            gauge.labels(model=model).set(0)
        for path in ("graph", "eager"):
            self.decode_forwards.labels(model=model, path=path)
        for scheduling in ("ahead", "serial"):
            self.sampling_steps.labels(model=model, scheduling=scheduling)

    def observe_stats(self, stats: LoopStats) -> None:
        self.last_stats = stats  # read by the SMG service's GetLoads
        self.requests_running.labels(model=self.model).set(stats.num_running)
        # The engine's queue after its step scheduled every request a slot could take, so it
        # never exceeds max_waiting while slots are the limit (docs/reliability.md, admission).
        self.requests_waiting.labels(model=self.model).set(stats.num_waiting)
        self.kv_cache_usage.labels(model=self.model).set(stats.kv_usage_ratio)
        self._count_steps(stats)
        self.vllm.observe_stats(stats)

    def _count_steps(self, stats: LoopStats) -> None:
        """Advance the step counters by what the engine's cumulative counts grew since the last
        snapshot (the engine counts; the exporter only follows)."""
        totals = {
            ("graph", self.decode_forwards, "path"): stats.graph_replays,
            ("eager", self.decode_forwards, "path"): stats.eager_decodes,
            ("ahead", self.sampling_steps, "scheduling"): stats.ahead_steps,
            ("serial", self.sampling_steps, "scheduling"): stats.serial_steps,
        }
        for (name, counter, label), total in totals.items():
            grown = total - self._step_counts[name]
            if grown > 0:
                counter.labels(**{"model": self.model, label: name}).inc(grown)
                self._step_counts[name] = total

    def observe_finished(self, event: TokenEvent, options: RequestOptions, cancelled: bool = False) -> None:
        """Count one final event. ``cancelled``: the request was aborted because its client went
        away (:meth:`server.engine_loop.EngineLoop.abort`), counted as ``finish_reason="cancelled"``
        apart from ``aborted`` (the server cut it: a drain past its grace period)."""
        report: RequestReport | None = event.report
        if report is None or event.finish_reason is None:
            return
        policy = options.sparse.policy
        labels = {"model": self.model, "policy": policy}
        aborted = event.finish_reason is FinishReason.ABORTED
        reason = CANCELLED if cancelled and aborted else event.finish_reason.value
        self.requests_finished.labels(finish_reason=reason, **labels).inc()
        self.prompt_tokens.labels(**labels).inc(report.prompt_tokens)
        self.generation_tokens.labels(**labels).inc(report.completion_tokens)
        if report.kv.selection_skipped_steps:
            self.selection_skipped_rows.labels(**labels).inc(report.kv.selection_skipped_steps)
        if report.completion_tokens > 0:
            self.time_to_first_token.labels(**labels).observe(report.timings.ttft_seconds)
            self.queue_time.labels(**labels).observe(report.timings.queue_seconds)
        self.e2e_request_latency.labels(**labels).observe(report.timings.jct_seconds)
        for gap in report.timings.inter_token_seconds:
            self.inter_token_latency.labels(**labels).observe(gap)
        for check in report.guardian.checks:
            self.guardian_check.labels(**labels).observe(check.cpu_seconds)
        self.vllm.observe_finished(report)
        self.savings.observe_finished(report, policy, options.stopping.max_new_tokens)

    def observe_dropped(self, options: RequestOptions, finish_reason: str) -> None:
        """Count an admitted request that got no final event (so no report): ``cancelled`` before
        the engine accepted it, or ``error`` when an engine failure took it
        (:class:`server.engine_loop.EngineLoop`'s ``on_dropped``)."""
        labels = {"model": self.model, "policy": options.sparse.policy}
        self.requests_finished.labels(finish_reason=finish_reason, **labels).inc()

    def serve(self, host: str, port: int) -> Any:
        """Start the HTTP endpoint; returns the server (``server_address[1]`` is the bound port).

        Like ``prometheus_client.start_http_server``, but polling for shutdown every 50 ms
        instead of 500 ms, so a drained server exits promptly.
        """
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("_MetricsServer", (_ThreadingWSGIServer,), {"address_family": family})
        server: WSGIServer = make_server(
            host, port, make_wsgi_app(self.registry), server_class, _QuietHandler
        )
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="lil-sparse-metrics",
            daemon=True,
        ).start()
        return server


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass
