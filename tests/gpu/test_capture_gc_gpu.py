"""A CUDA graph that dies in a reference cycle while the engine captures must not break the
capture: Python's collector would finalize it there, and its destructor's ``cudaGraphExecDestroy``
invalidates the capture ("operation not permitted when stream is capturing";
:func:`lil_sparse.engine.cuda_graphs.automatic_gc_paused`)."""

from __future__ import annotations

import gc

import pytest
import torch
from gpu_engine import gpu_engine

from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("flashinfer")


def requests() -> tuple[list[list[int]], list[RequestOptions]]:
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 384, (n,), generator=gen).tolist() for n in (37, 90, 161)]
    options = [
        RequestOptions(
            stopping=StoppingOptions(max_new_tokens=n, ignore_eos=True),
            sparse=SparseOptions(policy="infllm", budget_tokens=48, sink_tokens=16, dense_layers=1),
        )
        for n in (20, 14, 8)
    ]
    return prompts, options


def test_a_graph_dying_in_a_cycle_during_a_capture_leaves_it_intact(tiny_gqa2_dir, monkeypatch):
    expected = gpu_engine(tiny_gqa2_dir, cuda_graphs=False)
    want = expected.generate(*requests())
    expected.close()

    engine = gpu_engine(tiny_gqa2_dir, cuda_graphs=True)
    graphs = engine.runner.graphs
    assert graphs is not None
    counter = torch.zeros(1, device="cuda")
    spare = []  # captured graphs, each let go inside one of the engine's captures
    for _ in range(8):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            counter.add_(1)
        spare.append(graph)
    forward = graphs._forward
    dropped = []

    def forward_dropping_a_graph(step):
        if torch.cuda.is_current_stream_capturing() and spare:
            cycle: list[object] = [spare.pop()]
            cycle.append(cycle)  # the graph is now reachable only through this young cycle
            dropped.append(1)
            del cycle
        return forward(step)

    monkeypatch.setattr(graphs, "_forward", forward_dropping_a_graph)
    threshold = gc.get_threshold()
    gc.set_threshold(1, 1, 1)  # a collection at nearly every allocation: inside the capture too
    try:
        got = engine.generate(*requests())
    finally:
        gc.set_threshold(*threshold)
    stats = engine.runner.graph_stats()
    engine.close()
    assert 0 < len(dropped) == min(stats["captures"], 8) and stats["replays"] > 0
    assert [r.output_token_ids for r in got] == [r.output_token_ids for r in want]
    assert all(len(r.output_token_ids) == n for r, n in zip(got, (20, 14, 8), strict=True))
