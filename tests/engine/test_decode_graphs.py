"""DecodeGraphs' host-side bookkeeping on CPU: the per-(batch, width) input sets that the captured
graphs read in place, and the garbage collector paused around a capture (tests/gpu runs the
captures themselves on the H200)."""

from __future__ import annotations

import gc

import pytest
import torch

from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.engine import cuda_graphs
from lil_sparse.engine.cuda_graphs import CapturedStep, DecodeGraphs, DecodeStep, automatic_gc_paused
from lil_sparse.engine.decode_layouts import distinct_layouts


def step_on(buffers: tuple[torch.Tensor, ...]) -> DecodeStep:
    """A step over an input set (no layers' layouts or policy groups: its key still leads with
    the batch size and width, which is what the sets are keyed by)."""
    return DecodeStep(*buffers, layer_layouts=[], groups=[], update_metadata=False)


def test_input_sets_are_kept_per_shape_and_leave_with_their_graphs(engine, monkeypatch):
    """Each (batch, width) keeps one set of tensors across steps; a new shape beyond
    MAX_INPUT_SETS drops the least recently used set and every graph keyed by its (batch, width),
    and nothing else."""
    monkeypatch.setattr(cuda_graphs, "MAX_INPUT_SETS", 3)
    runner = engine.runner
    graphs = DecodeGraphs(runner.model, runner.kv, runner.backend, runner.num_kv_heads)
    heads, device = runner.num_kv_heads, torch.device("cpu")
    ids, positions, slots, base = graphs.input_buffers(4, 16, torch.int32, device)
    assert (ids.shape, positions.shape, slots.shape, base.shape) == ((4,), (4,), (4, heads), (4 * heads, 16))
    assert (ids.dtype, slots.dtype, base.dtype) == (torch.long, torch.long, torch.int32)
    assert graphs.input_buffers(4, 16, torch.int32, device)[0] is ids  # the same tensors every step
    shapes = [(4, 16), (1, 16), (4, 32)]
    for padded, width in shapes[1:]:
        graphs.input_buffers(padded, width, torch.int32, device)
    # Two graphs per shape (another policy mix, say), keyed as DecodeGraphs.run keys them. No
    # CUDA graph exists off CUDA; the eviction reads the keys only.
    for padded, width in shapes:
        step = step_on(graphs.inputs[(padded, width)])
        logits = torch.zeros(padded, 8)
        for split in ((0,), (-1,)):
            graphs.captured[(*step.key(), split)] = CapturedStep(None, step, logits)  # type: ignore[arg-type]
    graphs.input_buffers(4, 16, torch.int32, device)  # used again: (1, 16) is now the oldest
    graphs.input_buffers(2, 8, torch.int32, device)
    assert list(graphs.inputs) == [(4, 32), (4, 16), (2, 8)]
    assert sorted({key[:2] for key in graphs.captured}) == [(4, 16), (4, 32)]
    assert len(graphs.captured) == 4 and graphs.stats()["evictions"] == 2
    assert graphs.input_buffers(4, 16, torch.int32, device)[0] is ids  # kept sets keep their tensors
    again = graphs.input_buffers(1, 16, torch.int32, device)  # a dropped shape gets a fresh set
    assert again[0].shape == (1,) and list(graphs.inputs) == [(2, 8), (4, 16), (1, 16)]
    assert sorted({key[:2] for key in graphs.captured}) == [(4, 16)]  # (4, 32)'s graphs left with it
    assert graphs.stats()["evictions"] == 4


def test_the_collector_is_paused_inside_and_restored_after():
    was = gc.isenabled()
    try:
        gc.enable()
        with automatic_gc_paused():
            assert not gc.isenabled()
        assert gc.isenabled()
        with pytest.raises(RuntimeError, match="capture failed"), automatic_gc_paused():
            raise RuntimeError("capture failed")
        assert gc.isenabled()
        gc.disable()  # a caller that turned it off keeps it off
        with automatic_gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable() if was else gc.disable()


def test_a_step_names_its_distinct_layouts_and_each_layers_index_once():
    """``distinct_layouts`` keeps first-seen order by identity (equal geometries built apart stay
    apart), and the graph key's per-layer indices point into it; both are worked out once per
    step (a replay asks for them several times) and match a fresh scan."""
    lengths = torch.tensor([3, 5], dtype=torch.int32)
    a, b = (DecodeLayout.build([2, 1], lengths, stride=4) for _ in range(2))
    ids = torch.zeros(2, dtype=torch.long)
    buffers = (ids, ids, torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 4))
    step = DecodeStep(*buffers, layer_layouts=[b, b, a, b, a], groups=[], update_metadata=False)
    distinct = step.distinct_layouts()
    assert len(distinct) == 2 and distinct[0] is b and distinct[1] is a
    assert step.key()[2] == (0, 0, 1, 0, 1)
    assert step.distinct_layouts() is distinct  # not rebuilt
    assert [id(x) for x in distinct] == [id(x) for x in distinct_layouts(step.layer_layouts)]
