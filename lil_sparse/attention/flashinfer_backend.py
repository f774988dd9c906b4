"""FlashInfer attention on CUDA: ragged causal prefill and block-sparse paged decode.

Prompt chunks that continue a prompt run FlashInfer's paged prefill over the request's pages
(:mod:`lil_sparse.attention.flashinfer_chunk_prefill`, :meth:`FlashInferBackend.chunk_prefill`).

Decode is one ``BatchDecodeWithPagedKVCacheWrapper`` batch whose rows are (sequence, KV head)
pairs over one-head pages (``num_kv_heads=1``, layout "HND", the group's G query heads as the
row's queries). A row's page list is the pages its policy selected, so a short list *is* the
block-sparse decode. A batch of very unequal rows runs as two calls over its long and short
rows (:mod:`lil_sparse.attention.decode_split`, :mod:`lil_sparse.attention.flashinfer_decode_slot`);
a batch of few rows short enough for one loop step per split, or of at most 4 nearly equal
rows (on 132 SMs), runs the Triton decode of :mod:`lil_sparse.kernels.paged_decode` over the
same buffers instead (``fast_decode``; the rule is
:func:`lil_sparse.kernels.fast_decode.runs_triton`).

``plan()`` runs once per distinct page-count vector (page *counts* are fixed for the step, and
change once per ``page_size`` tokens of a row): a step whose slot was planned with the same counts
keeps that plan and only refreshes ``last_page_len`` (see :func:`needs_plan`). For each layer only
the page *ids* change, and they are rewritten on the device into the caller-owned indices buffer
that the planned kernel reads. The wrappers run in FlashInfer's
CUDA-graph mode so the same buffers serve eager steps and captured graphs
(:mod:`lil_sparse.engine.cuda_graphs`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from lil_sparse.attention.backend import AttentionBackend
from lil_sparse.attention.decode_split import choose_split
from lil_sparse.attention.flashinfer_chunk_prefill import PagedChunkPrefill
from lil_sparse.attention.flashinfer_decode_slot import (
    PART_INT_WORKSPACE_BYTES,
    DecodeSlot,
    PlanShape,
    needs_plan,
)
from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.config import EngineConfig
from lil_sparse.models.config import ModelConfig

if TYPE_CHECKING:  # Triton is imported only where the Triton decode runs (lil_sparse.kernels)
    from lil_sparse.kernels.fast_decode import FastDecode

WORKSPACE_BYTES = 128 * 1024 * 1024  # FlashInfer's recommended split-k scratch size
SUPPORTED_HEAD_DIMS = (64, 128, 256)
# Measured on an H100 (docs/bench/attention_micro.md): at group 4 (Llama-3.1-8B) the tensor-core
# kernel is up to 9% faster from batch 8 on and within 25% slower only at batch 1 (a ~0.05 ms
# kernel), so it is the default from group 4 on.
TENSOR_CORE_MIN_GROUP = 4
# FlashInfer 0.6.6's CUDA-core decode kernel is compiled for these group sizes only ("Unsupported
# group_size: 6" otherwise, as for Qwen2-1.5B's 12/2 heads); other groups need tensor cores.
CUDA_CORE_GROUPS = (1, 2, 3, 4, 8)

__all__ = ["FlashInferBackend", "needs_plan"]


class FlashInferBackend(AttentionBackend):
    name = "flashinfer"

    def __init__(
        self,
        config: EngineConfig,
        model_config: ModelConfig,
        use_tensor_cores: bool | None = None,
        split_calls: bool = True,
        concurrent_split: bool = True,
        fast_decode: bool = True,
    ) -> None:
        """``use_tensor_cores``: FlashInfer's tensor-core decode (None: from group 4 on, and where
        the CUDA-core kernel lacks the group). ``split_calls``: run a step of very unequal rows
        as two calls (:mod:`lil_sparse.attention.decode_split`; tensor-core decode only, whose
        work split that module models). ``concurrent_split``: run those two calls concurrently,
        the second on a stream of its own with a float workspace of its own (128 MiB more device
        memory; :mod:`lil_sparse.attention.flashinfer_decode_slot`). ``fast_decode``: run the
        Triton decode of :mod:`lil_sparse.kernels.paged_decode` instead of FlashInfer's for steps
        its rule takes (:func:`~lil_sparse.kernels.fast_decode.runs_triton`), with the tiles of
        :func:`step_tiles` (the narrowest that hold the step's longest row in one loop step per
        split, else the widest, pipelined)."""
        import flashinfer

        if not config.device.startswith("cuda"):
            raise ValueError("backend: 'flashinfer' needs a CUDA device")
        if config.dtype == "float32":
            raise ValueError("dtype: the flashinfer backend runs bfloat16 or float16, not float32")
        if model_config.head_dim not in SUPPORTED_HEAD_DIMS:
            raise ValueError(
                f"head_dim: flashinfer supports {SUPPORTED_HEAD_DIMS}, the model has {model_config.head_dim}"
            )
        self._flashinfer = flashinfer
        self.dtype = torch.float16 if config.dtype == "float16" else torch.bfloat16
        self.device = torch.device(config.device)
        self.page_size = config.page_size
        self.head_dim = model_config.head_dim
        self.group = model_config.queries_per_kv_head
        self.num_heads = model_config.num_heads
        self.num_kv_heads = model_config.num_kv_heads
        max_context = min(
            config.max_model_len or model_config.max_position_embeddings, model_config.max_position_embeddings
        )
        self.max_pages_per_row = -(-max_context // config.page_size)
        if use_tensor_cores is False and self.group not in CUDA_CORE_GROUPS:
            raise ValueError(
                f"use_tensor_cores: FlashInfer's CUDA-core decode does not run group {self.group}"
            )
        self.use_tensor_cores = (
            self.group >= TENSOR_CORE_MIN_GROUP or self.group not in CUDA_CORE_GROUPS
            if use_tensor_cores is None
            else use_tensor_cores
        )
        self.split_calls = split_calls and self.use_tensor_cores
        self.fast_decode = fast_decode
        self.prefers_longest_first = self.split_calls
        self.num_sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        self.shape = PlanShape(self.group, self.head_dim, self.page_size, self.dtype)
        self.workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=self.device)
        self._split_lane = torch.cuda.Stream(self.device) if self.split_calls and concurrent_split else None
        # The concurrent second call's float workspace, made with the backend: its memory is
        # taken at start-up, not at the first split, mid-serving.
        self._second_workspace = torch.zeros_like(self.workspace) if self._split_lane is not None else None
        # Slots are keyed by (rows, position of the layout in the step): CUDA-graph mode fixes a
        # wrapper's batch size, and a captured graph keeps reading the buffers of its slot.
        self._slots: dict[tuple[int, int], DecodeSlot] = {}
        self._active: dict[int, DecodeSlot] = {}
        self._prefill = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(self.workspace, "NHD", backend="fa2")
        self._prefill_key: tuple[object, ...] | None = None
        self._chunk_prefill: PagedChunkPrefill | None = None  # built on the first continuing chunk
        # plan() fills a pinned host buffer and copies it to the device asynchronously; with
        # overlap scheduling the next plan() can come before that copy ran, so each plan waits
        # for the previous one's copy (an event right after it; mini-sglang#103, vllm#40756).
        self._planned = torch.cuda.Event()

    # ---- prefill ----------------------------------------------------------------------------
    def prefill(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: list[int]
    ) -> torch.Tensor:
        key = (tuple(cu_seqlens), q.dtype, q.shape[1], k.shape[1])
        if key != self._prefill_key:  # every layer of a prefill step shares one plan
            indptr = torch.tensor(cu_seqlens, dtype=torch.int32)
            self._planned.synchronize()
            self._prefill.plan(
                indptr,
                indptr,
                q.shape[1],
                k.shape[1],
                q.shape[2],
                causal=True,
                q_data_type=q.dtype,
                kv_data_type=k.dtype,
            )
            self._planned.record()
            self._prefill_key = key
        return self._prefill.run(q, k, v)

    def chunk_prefill(self) -> PagedChunkPrefill:
        """FlashInfer's paged prefill for chunks that continue a prompt (planned per step)."""
        if self._chunk_prefill is None:
            self._chunk_prefill = PagedChunkPrefill(self.workspace, self.page_size)
        return self._chunk_prefill

    # ---- decode -----------------------------------------------------------------------------
    def begin_decode_step(self, layouts: Sequence[DecodeLayout]) -> None:
        self._active = {}
        self._prefill_key = None
        for position, layout in enumerate(layouts):
            slot = self.slot_for(layout.rows, position, layout.nnz)
            if needs_plan(slot.planned_counts, layout.counts_host):
                self._plan(slot, layout)
            else:
                self._refresh_last_page_len(slot, layout)
            slot.packed_from = None
            self._active[id(layout)] = slot

    def _plan(self, slot: DecodeSlot, layout: DecodeLayout) -> None:
        """``plan()`` ``slot`` for ``layout``'s page counts (writes indptr and last_page_len), as
        one call or, for very unequal rows, two (:func:`choose_split`)."""
        from lil_sparse.kernels.fast_decode import runs_triton, step_tiles  # (Triton: on use)

        counts = layout.counts_host
        indptr = torch.tensor(list(itertools.accumulate(counts, initial=0)), dtype=torch.int32)
        # A host copy of last_page_len keeps plan() from syncing with the device.
        last_host = (
            torch.tensor(layout.last_page_len_host, dtype=torch.int32)
            if layout.last_page_len_host
            else layout.last_page_len.cpu()
        )
        split = 0
        fast, slot.fast_tiles = slot.fast, None
        if fast is not None and runs_triton(max(counts), sum(counts), len(counts), fast.tiles):
            slot.fast_tiles = step_tiles(fast.tiles, max(counts))
        if self.split_calls and slot.fast_tiles is None:  # a step's rows are its sequences x KV heads
            split = choose_split(counts, self.num_kv_heads, self.num_sms, max(128 // self.page_size, 1))
            split = split if slot.can_split(split) else 0
        self._planned.synchronize()
        slot.plan(indptr, last_host, self.shape, split, self._wrapper)
        self._planned.record()
        slot.planned_counts = counts
        slot.planned_last = layout.last_page_len_host or None

    def _refresh_last_page_len(self, slot: DecodeSlot, layout: DecodeLayout) -> None:
        """Keep ``slot``'s plan (same counts, :func:`needs_plan`); write only a changed ``last_page_len``."""
        host = layout.last_page_len_host
        if host and host == slot.planned_last:
            return
        if host:
            slot.last_page_len.copy_(torch.tensor(host, dtype=torch.int32), non_blocking=True)
            slot.planned_last = host
        else:  # values only on the device: a device-to-device copy, no sync
            slot.last_page_len.copy_(layout.last_page_len, non_blocking=True)
            slot.planned_last = None

    def slot_for(self, rows: int, position: int, nnz: int) -> DecodeSlot:
        """The decode slot for ``rows`` rows at ``position`` in the step, created on first use."""
        key = (rows, position)
        slot = self._slots.get(key)
        if slot is None or slot.indices.numel() < nnz:
            capacity = max(nnz, rows * self.max_pages_per_row)
            indptr = torch.zeros(rows + 1, dtype=torch.int32, device=self.device)
            indices = torch.zeros(capacity, dtype=torch.int32, device=self.device)
            last_page_len = torch.ones(rows, dtype=torch.int32, device=self.device)
            wrapper = self._wrapper(indptr, indices, last_page_len, None)
            slot = DecodeSlot(
                wrapper, indptr, indices, last_page_len, lane=self._split_lane, fast=self._fast(rows)
            )
            self._slots[key] = slot
        return slot

    def _fast(self, rows: int) -> FastDecode | None:
        """The Triton decode for a slot of ``rows`` rows, when enabled and it applies
        (:func:`lil_sparse.kernels.fast_decode.make_fast_decode`)."""
        if not self.fast_decode:
            return None
        from lil_sparse.kernels.fast_decode import make_fast_decode  # (Triton: imported on use)

        fast = make_fast_decode(rows, self.group, self.head_dim, self.page_size, self.num_sms, self.device)
        if fast is not None:
            fast.compile(self.dtype)  # every tile a later step may pick, built now (outside any graph)
        return fast

    def _wrapper(
        self, indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor, part: int | None
    ) -> object:
        """A CUDA-graph-mode decode wrapper reading these buffers. ``part``: None for a slot's own
        wrapper; 0 or 1 for the first or second call of a split, which get a 1 MiB int workspace
        (their plan arrays) instead of FlashInfer's 8 MiB, and, for a concurrent second call, the
        second float workspace."""
        wrapper = self._flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace,
            "HND",
            use_cuda_graph=True,
            use_tensor_cores=self.use_tensor_cores,
            paged_kv_indptr_buffer=indptr,
            paged_kv_indices_buffer=indices,
            paged_kv_last_page_len_buffer=last_page_len,
        )
        if part is not None:
            float_workspace = self.workspace
            if part == 1 and self._second_workspace is not None:
                float_workspace = self._second_workspace
            wrapper.reset_workspace_buffer(
                float_workspace, torch.empty(PART_INT_WORKSPACE_BYTES, dtype=torch.uint8, device=self.device)
            )
        return wrapper

    def step_key(self, layouts: Sequence[DecodeLayout]) -> tuple[int, ...]:
        """What a captured step depends on beyond its tensors' shapes: each layout's split point
        (0: one call) or, for the Triton decode, minus its pages per loop step (at most 128), shifted
        left by 16 bits for the pipelined loop, as planned by :meth:`begin_decode_step`."""
        keys = []
        for slot in map(self._slot_of, layouts):
            tiles = slot.fast_tiles
            keys.append(slot.split if tiles is None else -(tiles.block_pages << (16 * tiles.pipelined)))
        return tuple(keys)

    def pack_indices(self, page_ids: torch.Tensor, layout: DecodeLayout) -> None:
        """Write ``layout``'s CSR page ids from padded ``page_ids: [rows, >= width] int32``.

        Runs on the device with no host sync; the slot's ``last_page_len`` and ``indptr`` stay as
        ``plan()`` left them.
        """
        slot = self._slot_of(layout)
        positions = layout.padded_positions
        if positions is not None and page_ids.shape[1] == layout.stride and page_ids.is_contiguous():
            # Static shape (rows * stride): capturable; the kernel reads only the first nnz.
            torch.index_select(page_ids.reshape(-1), 0, positions, out=slot.indices[: positions.numel()])
        else:
            padded = page_ids[:, : layout.width].reshape(-1)
            torch.index_select(padded, 0, layout.flat_positions, out=slot.indices[: layout.nnz])
        slot.packed_from = page_ids

    def selection_target(
        self, base_page_ids: torch.Tensor, layout: DecodeLayout
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The slot's CSR buffers with ``base_page_ids`` packed in (once per step and slot; a graph
        step packs them before the replay, :mod:`lil_sparse.engine.cuda_graphs`). A selecting
        layer then overwrites only its groups' rows, on the device
        (:func:`lil_sparse.kernels.page_select.select_pages`)."""
        slot = self._slot_of(layout)
        if base_page_ids is not slot.packed_from:
            self.pack_indices(base_page_ids, layout)
        return slot.indptr, slot.indices

    def decode(
        self,
        layer: int,
        q: torch.Tensor,
        k_pages: torch.Tensor,
        v_pages: torch.Tensor,
        page_ids: torch.Tensor,
        layout: DecodeLayout,
    ) -> torch.Tensor:
        slot = self._slot_of(layout)
        if page_ids is not slot.packed_from:
            self.pack_indices(page_ids, layout)
        out, _ = slot.run(q, k_pages, v_pages, return_lse=False)
        return out

    def decode_with_lse(
        self,
        layer: int,
        q: torch.Tensor,
        k_pages: torch.Tensor,
        v_pages: torch.Tensor,
        page_ids: torch.Tensor,
        layout: DecodeLayout,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        slot = self._slot_of(layout)
        if page_ids is not slot.packed_from:
            self.pack_indices(page_ids, layout)
        return slot.run(q, k_pages, v_pages, return_lse=True)

    def alias_layout(self, alias: DecodeLayout, layout: DecodeLayout) -> None:
        """Let ``alias`` (a graph's static copy of ``layout``) resolve to ``layout``'s slot."""
        self._active[id(alias)] = self._slot_of(layout)

    def _slot_of(self, layout: DecodeLayout) -> DecodeSlot:
        slot = self._active.get(id(layout))
        if slot is None:
            raise RuntimeError("begin_decode_step() must be called with every layout the step uses")
        return slot
