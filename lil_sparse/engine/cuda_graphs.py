"""CUDA graphs for decode steps, Quest and InfLLM selection included.

A decode step's forward is fixed-shape once its page tables have a fixed width: the runner
buckets the width (:meth:`ModelRunner.width_bucket`), policies take a fixed
top-k size, and page ids are packed with padded, static-length positions
(:attr:`DecodeLayout.padded_positions`). So a graph captured for one *step shape* serves every
later step of that shape. The token ids, positions, write slots and page tables are written
before each replay straight into the tensors the graphs of that batch size and width read
(:meth:`DecodeGraphs.input_buffers`); the step's other inputs are copied into the graph's static
tensors, and FlashInfer is planned (outside the graph) into the buffers the graph reads.

Measured on the H200 (2026-12-01, 04:34 UTC, ``bench/decode_e2e.py`` at the 1.5B shape, 4k
tokens, dense, the three ways alternating in one process, two rounds of each of the benchmark's
two runs): the inputs by six PyTorch ops and four copies before the replay 1.223-1.230 ms per
step at batch 1 and 1.965-1.969 at batch 8; by the inputs kernel
(:mod:`lil_sparse.kernels.decode_inputs`) and the copies 1.202-1.205 and 1.944-1.946; by the
kernel into the graphs' own tensors 1.179-1.183 and 1.879-1.882.

The step shape (the graph key) is: batch size (padded to a bucket by the runner), width bucket,
which layout each layer uses, the metadata flag, per policy group (policy, rows, top-k
size, whether the top-k needs sorting, dense-layer range), and how the backend splits each
layout into calls (:meth:`FlashInferBackend.step_key`). H2O's mass update runs over the
fixed width too (padding at probability zero), so every policy replays. At most
``MAX_GRAPHS`` graphs are kept; a new shape beyond that evicts the least recently replayed one.
Counters (:meth:`DecodeGraphs.stats`) say how many steps replayed and how many ran eagerly.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

from lil_sparse.attention.flashinfer_backend import FlashInferBackend
from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.engine.decode_inputs import allocate_decode_inputs
from lil_sparse.engine.decode_layouts import distinct_layouts
from lil_sparse.engine.side_streams import SideStreams
from lil_sparse.engine.step_attention import DecodeAttention, PolicyGroup
from lil_sparse.kv import KVCache
from lil_sparse.models.transformer import CausalLM

MAX_GRAPHS = 64  # captured step shapes kept; a new one beyond this evicts the least recently used
MAX_INPUT_SETS = 16  # (batch, width) input tensor sets kept; evicting one drops the graphs that read it
CAPTURE_AFTER = 2  # a shape is captured the second time it is seen: one-off shapes never pay for it
# The PolicyBatch columns a graph step reads (its static copies and every replay's inputs).
GROUP_TENSOR_FIELDS = ("rows", "table", "held", "select_count", "sink_pages", "recent_pages", "dense_layers")


@dataclass(frozen=True)
class DecodeStep:
    """Everything one decode step's forward reads.

    ``input_ids, positions: [B] int64``; ``write_slots: [B, Hkv] int64``; ``base_page_ids:
    [rows, width] int32``; ``layer_layouts``: one per layer (shared objects for shared plans);
    ``groups``: the per-layer selecting policy groups.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    write_slots: torch.Tensor
    base_page_ids: torch.Tensor
    layer_layouts: list[DecodeLayout]
    groups: list[PolicyGroup]
    update_metadata: bool

    def distinct_layouts(self) -> tuple[DecodeLayout, ...]:
        """``layer_layouts`` without repeats (by identity), in first-seen order."""
        return self._layout_index[0]

    @cached_property
    def _layout_index(self) -> tuple[tuple[DecodeLayout, ...], tuple[int, ...]]:
        # (distinct layouts, each layer's index into them), worked out once per step: a step
        # asks for them several times (key, pack, copies, aliases), each a scan of every layer,
        # and a captured step's static copy at every replay.
        distinct = tuple(distinct_layouts(self.layer_layouts))
        index = {id(layout): position for position, layout in enumerate(distinct)}
        return distinct, tuple(index[id(layout)] for layout in self.layer_layouts)

    def key(self) -> tuple[object, ...]:
        return (
            self.input_ids.shape[0],
            self.base_page_ids.shape[1],
            self._layout_index[1],
            self.update_metadata,
            tuple(
                (
                    g.policy.name,
                    g.all_rows,
                    g.sole,  # decides whether an observer runs on a lane (step_attention.py)
                    g.batch.rows.shape[0],
                    g.batch.max_select,
                    g.batch.uniform_select,
                    g.min_dense_layers,
                    g.max_dense_layers,
                )
                for g in self.groups
            ),
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the forward reads, in a fixed order (the graph's inputs)."""
        out = [self.input_ids, self.positions, self.write_slots, self.base_page_ids]
        for layout in self.distinct_layouts():
            if layout.padded_positions is None:
                raise ValueError("layer_layouts: graph steps need layouts built with a stride")
            out.append(layout.padded_positions)
        for group in self.groups:
            out.extend(getattr(group.batch, name) for name in GROUP_TENSOR_FIELDS)
            out.extend((group.newest, group.newest_at))
            if group.batch.layout is not None:  # H2O: the group's page counts feed its token mask
                out.extend((group.batch.layout.counts, group.batch.layout.last_page_len))
        return out

    def static_copy(self, shared_inputs: bool = False) -> DecodeStep:
        """A copy whose tensors the graph owns (same shapes, fresh storage); with
        ``shared_inputs`` the copy keeps this step's ``input_ids``, ``positions``, ``write_slots``
        and ``base_page_ids`` (:meth:`DecodeGraphs.input_buffers`, written before every replay)."""
        layouts = {
            id(layout): replace(layout, padded_positions=layout.padded_positions.clone())  # type: ignore[union-attr]
            for layout in self.distinct_layouts()
        }
        groups = [static_group(group) for group in self.groups]
        ids, positions, write_slots, base = (
            self.input_ids,
            self.positions,
            self.write_slots,
            self.base_page_ids,
        )
        if not shared_inputs:
            ids, positions, write_slots, base = (
                ids.clone(),
                positions.clone(),
                write_slots.clone(),
                base.clone(),
            )
        return DecodeStep(
            ids,
            positions,
            write_slots,
            base,
            [layouts[id(layout)] for layout in self.layer_layouts],
            groups,
            self.update_metadata,
        )


@dataclass
class CapturedStep:
    graph: torch.cuda.CUDAGraph
    step: DecodeStep  # the static inputs
    logits: torch.Tensor  # [B, V] float32, overwritten by every replay
    # The tensor each static input was last copied from. The runner reuses a layout's geometry
    # while page counts stay (never written after it is built, nor by the graph), so an input
    # that is the very same tensor as at the last replay needs no copy.
    sources: list[torch.Tensor | None] = field(default_factory=list)

    def load(self, step: DecodeStep) -> None:
        """Copy ``step``'s inputs into the static ones (skipping those already there, and those
        that are the static ones: :meth:`DecodeGraphs.input_buffers`)."""
        fresh_tensors = step.tensors()
        if not self.sources:
            self.sources = [None] * len(fresh_tensors)
        for index, (static, fresh) in enumerate(zip(self.step.tensors(), fresh_tensors, strict=True)):
            if fresh is not static and fresh is not self.sources[index]:
                static.copy_(fresh)
                self.sources[index] = fresh


class DecodeGraphs:
    def __init__(
        self,
        model: CausalLM,
        kv: KVCache,
        backend: FlashInferBackend,
        num_kv_heads: int,
        streams: SideStreams | None = None,
    ) -> None:
        """``streams``: lanes for the policy groups' kernels (captured as graph branches)."""
        self.model = model
        self.streams = streams
        self.kv = kv
        self.backend = backend
        self.num_kv_heads = num_kv_heads
        self.captured: OrderedDict[tuple[object, ...], CapturedStep] = OrderedDict()  # LRU order
        # (batch, width) -> (input_ids, positions, write_slots, base_page_ids), LRU order
        self.inputs: OrderedDict[tuple[int, int], tuple[torch.Tensor, ...]] = OrderedDict()
        self.seen: dict[tuple[object, ...], int] = {}
        self.replays = 0  # steps that replayed a graph
        self.eager_steps = 0  # steps that ran eagerly (first sight of a shape, capture included)
        self.captures = 0
        self.evictions = 0
        self._pool = torch.cuda.graph_pool_handle() if torch.cuda.is_available() else None

    def run(self, step: DecodeStep) -> torch.Tensor:
        """One decode step; the backend must have planned ``step.distinct_layouts()``.

        Returns logits ``[B, V] float32``, valid until the next call.
        """
        self._pack_base(step)
        # The backend's split of each layout into calls is baked into a capture too.
        key = (*step.key(), self.backend.step_key(step.distinct_layouts()))
        captured = self.captured.get(key)
        if captured is None:
            self.eager_steps += 1
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] < CAPTURE_AFTER:
                return self._forward(step)
            if len(self.captured) >= MAX_GRAPHS:
                self.captured.popitem(last=False)  # its memory returns to the shared pool
                self.evictions += 1
            return self._run_eager_and_capture(step, key)
        self.captured.move_to_end(key)
        captured.load(step)
        for static_layout, layout in zip(
            captured.step.distinct_layouts(), step.distinct_layouts(), strict=True
        ):
            self.backend.alias_layout(static_layout, layout)
        captured.graph.replay()
        self.replays += 1
        return captured.logits

    def input_buffers(
        self, padded: int, width: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input tensors of every step of ``padded`` rows and table ``width``: ``(input_ids
        [B] int64, positions [B] int64, write_slots [B, Hkv] int64, base_page_ids [B * Hkv,
        width] dtype)``. The runner writes a step's inputs into them
        (:func:`~lil_sparse.engine.decode_inputs.build_decode_inputs`) and the graphs captured
        for that shape read them in place, so a replay copies none of the four. At most
        :data:`MAX_INPUT_SETS` sets are kept; dropping the least recently used set drops the
        graphs that read it."""
        key = (padded, width)
        buffers = self.inputs.get(key)
        if buffers is not None:
            self.inputs.move_to_end(key)
            return buffers  # type: ignore[return-value]
        if len(self.inputs) >= MAX_INPUT_SETS:
            dropped, _ = self.inputs.popitem(last=False)
            for graph_key in [k for k in self.captured if k[:2] == dropped]:
                del self.captured[graph_key]
                self.evictions += 1
        buffers = allocate_decode_inputs(padded, self.num_kv_heads, width, dtype, device)
        self.inputs[key] = buffers
        return buffers

    def reset_counters(self) -> None:
        """Zero ``replays``, ``eager_steps``, ``captures`` and ``evictions`` (the captured graphs
        stay): the engine does after its start-up warm-up."""
        self.replays = self.eager_steps = self.captures = self.evictions = 0

    def stats(self) -> dict[str, int]:
        """``replays``, ``eager_steps``, ``captures``, ``evictions`` so far and ``cached`` graphs."""
        return {
            "replays": self.replays,
            "eager_steps": self.eager_steps,
            "captures": self.captures,
            "evictions": self.evictions,
            "cached": len(self.captured),
        }

    def _pack_base(self, step: DecodeStep) -> None:
        # Layers that attend the base pages (full, sink rows; dense layers) read the indices
        # packed here; layers that select repack their slot inside the graph.
        for layout in step.distinct_layouts():
            self.backend.pack_indices(step.base_page_ids, layout)

    def _forward(self, step: DecodeStep) -> torch.Tensor:
        attention = DecodeAttention(
            self.kv,
            self.backend,
            step.write_slots,
            step.base_page_ids,
            step.layer_layouts,
            step.groups,
            self.num_kv_heads,
            update_metadata=step.update_metadata,
            streams=self.streams,
        )
        try:
            hidden = self.model(step.input_ids, step.positions, attention)
        finally:
            attention.finish()  # the observers' lane joins the step (inside the graph)
        return self.model.compute_logits(hidden)

    def _run_eager_and_capture(self, step: DecodeStep, key: tuple[object, ...]) -> torch.Tensor:
        # The eager run is this step's real work and the warm-up capture needs (cuBLAS handles,
        # FlashInfer modules). Capture records without executing, so nothing is written twice.
        logits = self._forward(step)
        shared = self.inputs.get((step.input_ids.shape[0], step.base_page_ids.shape[1]))
        static = step.static_copy(shared_inputs=shared is not None and step.input_ids is shared[0])
        for static_layout, layout in zip(static.distinct_layouts(), step.distinct_layouts(), strict=True):
            self.backend.alias_layout(static_layout, layout)
        # The base pages must count as packed from the static base, so that base layers inside
        # the graph read the slot (packed before every replay) instead of repacking.
        self._pack_base(static)
        graph = torch.cuda.CUDAGraph()
        with automatic_gc_paused(), torch.cuda.graph(graph, pool=self._pool):
            static_logits = self._forward(static)
        self.captured[key] = CapturedStep(graph, static, static_logits)
        self.captures += 1
        return logits


def static_group(group: PolicyGroup) -> PolicyGroup:
    """A copy of ``group`` whose tensors a captured graph owns (:meth:`DecodeStep.static_copy`):
    fresh storage from ``clone()``, which makes a policy batch's strided columns unit-stride
    (Triton compiles those as kernel variants of their own) except a one-row column, which keeps
    its stride."""
    batch = replace(group.batch, **{name: getattr(group.batch, name).clone() for name in GROUP_TENSOR_FIELDS})
    if batch.layout is not None:  # H2O's group layout: its counts feed the token mask
        layout = replace(
            batch.layout,
            counts=batch.layout.counts.clone(),
            last_page_len=batch.layout.last_page_len.clone(),
        )
        batch = replace(batch, layout=layout)
    # known_newest=None: __post_init__ recomputes newest / newest_at from the clones (a kept
    # group's own newest tensors must never become a graph's static ones).
    return replace(group, batch=batch, known_newest=None)


@contextmanager
def automatic_gc_paused() -> Iterator[None]:
    """Python's automatic garbage collection off for the block, as it was after it (an error
    included). A collection inside a capture may finalize an unreachable ``CUDAGraph`` (one in a
    reference cycle, such as a closed engine's): its destructor's ``cudaGraphExecDestroy`` is not
    permitted while a stream captures, so it only warns "operation not permitted when stream is
    capturing", the capture is invalidated and the capture's next launch fails. PyTorch no longer
    collects before a capture since 2.9 (pytorch/pytorch#161037 describes the failure;
    NVIDIA/TransformerEngine#2092 pauses the collector the same way)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
