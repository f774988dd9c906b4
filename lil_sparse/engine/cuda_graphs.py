"""CUDA graphs for decode steps whose page ids are the same in every layer.

A step qualifies when no request selects pages per layer or observes attention (``full`` and
``sink``; also eviction steps, since eviction happens between steps). Such a step's forward is
fixed-shape for a given batch size: the model, the KV writes and one FlashInfer ``run()`` per
layer over buffers that ``plan()`` and :meth:`FlashInferBackend.pack_indices` fill *before*
replay. So one graph per batch size (captured on first use, the first step running eagerly) serves
every later step of that size; only the page counts, read from the planned buffers, change.

Steps with Quest, InfLLM or H2O rows run eagerly: their per-layer selection has shapes that
follow the context length (``topk`` over the held pages).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lil_sparse.attention.flashinfer_backend import FlashInferBackend
from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.engine.step_attention import DecodeAttention
from lil_sparse.kv import KVCache
from lil_sparse.models.transformer import CausalLM


@dataclass
class CapturedStep:
    """One captured decode step for a batch of ``B`` sequences and its static inputs/outputs.

    ``input_ids, positions: [B] int64``; ``write_slots: [B, Hkv] int64``;
    ``logits: [B, V] float32`` (overwritten by every replay).
    """

    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor
    positions: torch.Tensor
    write_slots: torch.Tensor
    logits: torch.Tensor


class DecodeGraphs:
    def __init__(self, model: CausalLM, kv: KVCache, backend: FlashInferBackend, num_kv_heads: int) -> None:
        self.model = model
        self.kv = kv
        self.backend = backend
        self.num_kv_heads = num_kv_heads
        self.num_layers = model.config.num_layers
        self.steps: dict[int, CapturedStep] = {}
        self._pool = torch.cuda.graph_pool_handle() if torch.cuda.is_available() else None

    def run(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        write_slots: torch.Tensor,
        page_ids: torch.Tensor,
        layout: DecodeLayout,
    ) -> torch.Tensor:
        """One decode step; the backend must have planned ``[layout]`` for this step.

        ``input_ids, positions: [B] int64``, ``write_slots: [B, Hkv] int64``, ``page_ids:
        [rows, width] int32``. Returns logits ``[B, V] float32``, valid until the next call.
        """
        self.backend.pack_indices(page_ids, layout)
        step = self.steps.get(input_ids.shape[0])
        if step is None:
            return self._run_eager_and_capture(input_ids, positions, write_slots, page_ids, layout)
        step.input_ids.copy_(input_ids)
        step.positions.copy_(positions)
        step.write_slots.copy_(write_slots)
        step.graph.replay()
        return step.logits

    def _forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        write_slots: torch.Tensor,
        page_ids: torch.Tensor,
        layout: DecodeLayout,
    ) -> torch.Tensor:
        attention = DecodeAttention(
            self.kv,
            self.backend,
            write_slots,
            page_ids,
            [layout] * self.num_layers,
            [],
            self.num_kv_heads,
            update_metadata=False,  # graph steps hold no Quest/InfLLM request (see the module doc)
        )
        return self.model.compute_logits(self.model(input_ids, positions, attention))

    def _run_eager_and_capture(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        write_slots: torch.Tensor,
        page_ids: torch.Tensor,
        layout: DecodeLayout,
    ) -> torch.Tensor:
        # The eager run is this step's real work and also the warm-up capture needs (cuBLAS
        # handles, FlashInfer modules). Capture records without executing, so nothing is
        # written twice into the KV cache.
        logits = self._forward(input_ids, positions, write_slots, page_ids, layout)
        static_ids, static_positions, static_slots = input_ids.clone(), positions.clone(), write_slots.clone()
        graph = torch.cuda.CUDAGraph()
        # page_ids is the tensor pack_indices() just used, so the captured layers read the
        # planned indices buffer and never rewrite it.
        with torch.cuda.graph(graph, pool=self._pool):
            static_logits = self._forward(static_ids, static_positions, static_slots, page_ids, layout)
        self.steps[input_ids.shape[0]] = CapturedStep(
            graph, static_ids, static_positions, static_slots, static_logits
        )
        return logits
