"""Overlap scheduling on FlashInfer (eager and CUDA graphs) against the serial engine.

The step launched ahead runs on the sampled tokens still on the device, its logits may be a
graph's output buffer, and the tokens reach the host through a pinned copy and an event: the
overlapped engine must give the serial engine's tokens, and logits of the same distribution
(rows run ahead in a batch that still holds requests about to finish may use another batch
bucket, so bf16 GEMMs may round differently: cosine >= 0.9999 per row, not bit equality).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_flashinfer_engine as engine_tests
import torch
from gpu_engine import gpu_engine

from lil_sparse.engine import LLMEngine

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")


def make_engine(model_dir: Path, cuda_graphs: bool, overlap: bool) -> LLMEngine:
    return gpu_engine(model_dir, cuda_graphs=cuda_graphs, poison_freed_pages=True, overlap_scheduling=overlap)


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_overlap_equals_serial_on_flashinfer(cuda_graphs, tiny_gqa2_dir):
    """Every policy in one batch, two sampled rows, staggered lengths (the fifth request joins
    when one finishes): the same tokens and logits with overlap scheduling on and off."""
    runs = {}
    for overlap in (False, True):
        engine = make_engine(tiny_gqa2_dir, cuda_graphs, overlap)
        recorder = engine_tests.record(engine)
        for _ in range(2 if cuda_graphs else 1):  # with graphs, the second pass replays
            reports = engine.generate(*engine_tests.no_sync_requests())
        runs[overlap] = (
            reports,
            recorder.logits[len(recorder.logits) // 2 :] if cuda_graphs else recorder.logits,
        )
        stats = engine.overlap_stats()
        assert (stats["ahead_steps"] > 0) == overlap and stats["catch_up_decodes"] == 0
        assert engine.pool.num_used == 0
        engine.close()
    (serial, serial_logits), (overlapped, overlapped_logits) = runs[False], runs[True]
    for want, have in zip(serial, overlapped, strict=True):
        assert have.output_token_ids == want.output_token_ids
        assert have.finish_reason == want.finish_reason
        assert have.kv.attended_pages_per_step == want.kv.attended_pages_per_step
    assert len(serial_logits) == len(overlapped_logits) > 0
    for want, have in zip(serial_logits, overlapped_logits, strict=True):
        assert want.shape == have.shape
        assert bool((torch.nn.functional.cosine_similarity(have, want, dim=-1) >= 0.9999).all())
