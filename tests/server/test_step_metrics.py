"""The engine's step counters reach Prometheus (CUDA-graph replays vs eager decode forwards, and
sampling steps that launched the next decode ahead vs serial ones), and GetInfo reports the
resolved selection and overlap modes."""

from __future__ import annotations

from lil_client._proto.lil_sparse.v1 import service_pb2

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.options import RequestOptions, StoppingOptions
from server import convert
from server.loop_messages import LoopStats
from server.metrics import ServerMetrics


def value(metrics: ServerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"model": "tiny", **labels})


def test_counters_follow_the_engine_totals():
    metrics = ServerMetrics("tiny")
    # Every series exists at zero before the first step.
    assert value(metrics, "lil_sparse_decode_forwards_total", path="graph") == 0
    assert value(metrics, "lil_sparse_sampling_steps_total", scheduling="ahead") == 0
    metrics.observe_stats(LoopStats(0, 0, 0, 0, 10, graph_replays=3, eager_decodes=2, ahead_steps=4))
    metrics.observe_stats(
        LoopStats(0, 0, 0, 0, 10, graph_replays=7, eager_decodes=2, ahead_steps=9, serial_steps=1)
    )
    metrics.observe_stats(
        LoopStats(0, 0, 0, 0, 10, graph_replays=7, eager_decodes=2, ahead_steps=9, serial_steps=1)
    )
    assert value(metrics, "lil_sparse_decode_forwards_total", path="graph") == 7
    assert value(metrics, "lil_sparse_decode_forwards_total", path="eager") == 2
    assert value(metrics, "lil_sparse_sampling_steps_total", scheduling="ahead") == 9
    assert value(metrics, "lil_sparse_sampling_steps_total", scheduling="serial") == 1


def test_engine_stats_count_decodes_and_sampling_steps(tiny_model_dir):
    """On CPU (no graphs, overlap off): a request of 6 tokens samples 6 times (prefill, then 5
    decode steps), all serial, and runs 5 eager decode forwards."""
    engine = LLMEngine.from_config(EngineConfig(model=str(tiny_model_dir), guardian_workers=0))
    options = RequestOptions(stopping=StoppingOptions(max_new_tokens=6, ignore_eos=True))
    (report,) = engine.generate([[5, 6, 7, 8]], [options])
    engine.close()
    stats = engine.stats()
    assert report.completion_tokens == 6
    assert (stats.graph_replays, stats.eager_decodes) == (0, 5)
    assert (stats.ahead_steps, stats.serial_steps) == (0, 6)


def test_info_reports_the_resolved_selection_and_overlap_modes(tiny_model_dir):
    """GetInfo tells clients whether outputs may depend on batch mates (``when_faster``) and
    whether steps run ahead, as the engine resolved them."""
    engine = LLMEngine.from_config(
        EngineConfig(
            model=str(tiny_model_dir), guardian_workers=0, selection="when_faster", overlap_scheduling=True
        )
    )
    engine.close()
    reply = convert.info_response(engine.info, RequestOptions(), service_pb2.Limits(), "test")
    assert (reply.selection, reply.overlap_scheduling) == ("when_faster", True)


def test_info_reports_how_long_the_warm_up_ran(tiny_model_dir):
    """GetInfo's ``warm_up_seconds``: the engine's own warm-up time (0 when it did not run), so
    a client can tell whether the server paid its kernel builds and graph captures up front."""
    for warm_up in (True, False):
        engine = LLMEngine.from_config(
            EngineConfig(model=str(tiny_model_dir), guardian_workers=0, kv_cache_tokens=1024, warm_up=warm_up)
        )
        engine.close()
        reply = convert.info_response(engine.info, RequestOptions(), service_pb2.Limits(), "test")
        report = engine.warm_up_report
        expected = report.seconds if report is not None else 0.0
        assert (report is not None, reply.warm_up_seconds) == (warm_up, expected)
        assert (reply.warm_up_seconds > 0) == warm_up
