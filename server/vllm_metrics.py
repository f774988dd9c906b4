"""vLLM's metric names, which gateways and autoscalers read (SMG, llm-d, KEDA).

Same meaning and units as vLLM's ``vllm:*`` series (vLLM ``v1/metrics/loggers.py``), labelled
``model_name``; ``kv_cache_usage_perc`` is a fraction in [0, 1] as in vLLM, despite its name.
``request_success_total`` counts every finished request by vLLM's ``finished_reason``: ``stop``
(EOS, a stop string, or Guardian's early stop), ``length`` or ``abort``. Registered in the
server's own registry next to the ``lil_sparse_*`` series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lil_sparse.events import FinishReason, RequestReport
from server.engine_loop import LoopStats

# vLLM's buckets (seconds), so dashboards built for vLLM read the same histogram edges.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
VLLM_FINISHED_REASON: dict[FinishReason, str] = {
    FinishReason.EOS: "stop",
    FinishReason.STOP_STRING: "stop",
    FinishReason.EARLY_STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.ABORTED: "abort",
}


class VllmMetrics:
    """The ``vllm:*`` series of one server; ``observe_finished`` runs on the engine thread."""

    def __init__(self, registry: CollectorRegistry, model_name: str) -> None:
        self.model_name = model_name
        label = ("model_name",)
        r = registry
        self.num_requests_running = Gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", label, registry=r
        )
        self.num_requests_waiting = Gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", label, registry=r
        )
        self.kv_cache_usage_perc = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", label, registry=r
        )
        self.time_to_first_token = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", label,
            buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.inter_token_latency = Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", label,
            buckets=ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.e2e_request_latency = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", label,
            buckets=E2E_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", label, registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", label, registry=r
        )
        self.request_success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            ("model_name", "finished_reason"), registry=r,
        )  # fmt: skip
        for gauge in (self.num_requests_running, self.num_requests_waiting, self.kv_cache_usage_perc):
            gauge.labels(model_name=model_name).set(0)
        for reason in ("stop", "length", "abort"):
            self.request_success.labels(model_name=model_name, finished_reason=reason)

    def observe_stats(self, stats: LoopStats) -> None:
        name = self.model_name
        self.num_requests_running.labels(model_name=name).set(stats.num_running)
        # Admitted requests still in the engine thread's inbox wait too.
        self.num_requests_waiting.labels(model_name=name).set(
            max(stats.num_waiting, stats.in_flight - stats.num_running)
        )
        self.kv_cache_usage_perc.labels(model_name=name).set(stats.kv_usage_ratio)

    def observe_finished(self, report: RequestReport) -> None:
        name = self.model_name
        self.request_success.labels(
            model_name=name, finished_reason=VLLM_FINISHED_REASON[report.finish_reason]
        ).inc()
        self.prompt_tokens.labels(model_name=name).inc(report.prompt_tokens)
        self.generation_tokens.labels(model_name=name).inc(report.completion_tokens)
        if report.completion_tokens > 0:
            self.time_to_first_token.labels(model_name=name).observe(report.timings.ttft_seconds)
        self.e2e_request_latency.labels(model_name=name).observe(report.timings.jct_seconds)
        for gap in report.timings.inter_token_seconds:
            self.inter_token_latency.labels(model_name=name).observe(gap)
