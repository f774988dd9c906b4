"""How a step runs: build the step's inputs and attention, run the model, return logits.

The runner turns scheduled sequences into flat device tensors. Per decode step it copies a few
per-sequence integers to the device once (positions, held pages, budgets), builds every page
index on the device, groups rows by policy (at most five groups) and gives the model one
:class:`DecodeAttention` that serves every layer (inputs: decode_inputs.py; per-layer layouts:
decode_layouts.py; policy groups: policy_groups.py; CUDA graphs: cuda_graphs.py).

Prefill runs the step's prompt chunks (a whole prompt is one chunk) in one model call with a
:class:`~lil_sparse.engine.prefill_attention.PrefillAttention`.
"""

from __future__ import annotations

import torch

from lil_sparse.attention.backend import AttentionBackend
from lil_sparse.attention.flashinfer_backend import FlashInferBackend
from lil_sparse.engine.cuda_graphs import DecodeGraphs, DecodeStep
from lil_sparse.engine.decode_inputs import build_decode_inputs
from lil_sparse.engine.decode_layouts import DecodeLayouts, distinct_layouts, longest_first
from lil_sparse.engine.kv_records import DecodeKVRecord, decode_kv_records
from lil_sparse.engine.page_manager import PageManager
from lil_sparse.engine.policy_groups import GroupTensors, build_policy_groups
from lil_sparse.engine.prefill_attention import ChunkRows, PrefillAttention
from lil_sparse.engine.selection_gate import SelectionCost, SelectionGate
from lil_sparse.engine.sequence import PrefillChunk, Sequence
from lil_sparse.engine.side_streams import SideStreams
from lil_sparse.engine.step_attention import DecodeAttention, PolicyGroup
from lil_sparse.kernels import TRITON_AVAILABLE
from lil_sparse.kv import KVCache
from lil_sparse.models.transformer import CausalLM
from lil_sparse.policies import get_policy

WIDTH_STEP = 256  # pages (4096 tokens at page size 16)


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        kv: KVCache,
        pages: PageManager,
        backend: AttentionBackend,
        num_layers: int,
        cuda_graphs: bool = False,
        selection: str = "exact",
        selection_cost: SelectionCost | None = None,
        side_streams: bool = True,
    ) -> None:
        """``selection``: ``EngineConfig.selection`` (``"exact"`` or ``"when_faster"``);
        ``selection_cost``: the gate's device constants (None: :class:`SelectionCost` defaults);
        ``side_streams``: policy groups' kernels on streams of their own (CUDA, fused kernels)."""
        self.model = model
        self.kv = kv
        self.pages = pages
        self.backend = backend
        self.num_layers = num_layers
        self.num_kv_heads = pages.num_kv_heads
        self.page_size = pages.page_size
        self.device = pages.device
        # Graph capture needs a backend that reads planned buffers (FlashInfer), on CUDA. Such a
        # runner pads batches to buckets with or without graphs, so that eager steps run the very
        # shapes (GEMM and attention plans) that graph steps replay.
        capturable = isinstance(backend, FlashInferBackend) and self.device.type == "cuda"
        self.streams: SideStreams | None = None
        if self.device.type == "cuda" and TRITON_AVAILABLE:
            model.fuse()  # fused QKV / gate-up matmuls and Triton norm, RoPE, SiLU kernels
            self.streams = SideStreams(self.device) if side_streams else None
        self.pad_batches = capturable
        self.layouts = DecodeLayouts(num_layers, self.num_kv_heads)
        self.group_tensors = GroupTensors()  # policy groups' tensors kept from step to step
        self.gate = SelectionGate(
            selection,
            self.num_kv_heads,
            self.page_size,
            kv.head_dim,
            kv.k.dtype,
            selection_cost or SelectionCost(),
        )
        self.graphs: DecodeGraphs | None = None
        self.ungraphed_decodes = 0  # decode forwards run without a graph runner (graphs off)
        if cuda_graphs and capturable and isinstance(backend, FlashInferBackend):
            self.graphs = DecodeGraphs(model, kv, backend, self.num_kv_heads, self.streams)

    # ---- prefill ----------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, chunks: list[PrefillChunk]) -> tuple[list[Sequence], torch.Tensor]:
        """Run prompt chunks in one model call (each request's prompt pages already admitted).

        Returns the requests whose prompt the call completes and their last-token logits
        ``[N, V] float32`` (``N`` may be 0), in that order. The call writes the chunks' K/V and
        changes no sequence: the engine then calls :meth:`record_chunk` for each chunk, so a
        failure in one request's bookkeeping stays that request's.
        """
        ordered = sorted(chunks, key=lambda c: c.start > 0)  # chunks starting a prompt first
        ids: list[int] = []
        positions: list[int] = []
        for chunk in ordered:
            ids.extend(chunk.seq.prompt_token_ids[chunk.start : chunk.end])
            positions.extend(range(chunk.start, chunk.end))
        input_ids = torch.tensor(ids, dtype=torch.long).to(self.device, non_blocking=True)
        position_ids = torch.tensor(positions, dtype=torch.long).to(self.device, non_blocking=True)
        slots, rows = self._chunk_rows(ordered, position_ids)
        seqs = [chunk.seq for chunk in ordered]
        attention = PrefillAttention(self.kv, self.backend, slots, rows, _reads_metadata(seqs))
        hidden = self.model(input_ids, position_ids, attention)
        done = [chunk.seq for chunk in ordered if chunk.is_last]
        last_rows = [r.row_end - 1 for r, chunk in zip(rows, ordered, strict=True) if chunk.is_last]
        last = torch.tensor(last_rows, dtype=torch.long).to(self.device, non_blocking=True)
        return done, self.model.compute_logits(hidden[last])

    def record_chunk(self, chunk: PrefillChunk) -> None:
        """After :meth:`prefill` ran ``chunk``: advance its request's prompt progress, and once
        the whole prompt is in, bring an eviction policy down to its budget.

        One request at a time (once per chunk, not per token): a failure here is that request's
        alone, and the eviction of one request never depends on another's."""
        seq = chunk.seq
        seq.num_cached_tokens = chunk.end
        seq.num_prefill_chunks += 1
        if chunk.is_last:
            seq.kv_report.peak_pages = max(seq.kv_report.peak_pages, seq.held_pages * self.num_kv_heads)
            self.pages.evict_after_prefill([seq])

    def _chunk_rows(
        self, chunks: list[PrefillChunk], position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, list[ChunkRows]]:
        """Cache slots ``[T, Hkv] int64`` of the packed tokens, and where each chunk sits."""
        slot_parts, rows = [], []
        row = 0
        for chunk in chunks:
            page_ids = self._prompt_pages(chunk.seq)  # [Hkv, pages]
            chunk_positions = position_ids[row : row + chunk.num_tokens]
            token_pages = page_ids[:, chunk_positions // self.page_size]  # [Hkv, C]
            slot_parts.append((token_pages * self.page_size + chunk_positions % self.page_size).t())
            policy = get_policy(chunk.seq.policy)
            observed = policy.observes_attention
            rows.append(
                ChunkRows(
                    row,
                    row + chunk.num_tokens,
                    chunk.start,
                    chunk.seq.num_prompt_tokens,
                    page_ids,
                    observer=policy if observed else None,
                    token_pages=self._token_pages(page_ids, chunk.end) if observed else None,
                )
            )
            row += chunk.num_tokens
        return torch.cat(slot_parts), rows

    def _prompt_pages(self, seq: Sequence) -> torch.Tensor:
        """``[Hkv, held] int64``: the pages of a prefilling sequence (its whole prompt, logical
        order: page ``i`` holds positions ``i * page_size ..``)."""
        return self.pages.table.table[seq.slot, :, : seq.held_pages].long()

    def _token_pages(self, page_ids: torch.Tensor, length: int) -> torch.Tensor:
        """``[Hkv, length] int64``: the page holding each of the first ``length`` prompt tokens."""
        return page_ids[:, torch.arange(length, device=self.device) // self.page_size]

    # ---- decode -----------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(
        self,
        seqs: list[Sequence],
        input_ids: torch.Tensor | None = None,
        kv_records: list[DecodeKVRecord] | None = None,
    ) -> torch.Tensor:
        """One token for every running sequence. Returns logits ``[B, V]``.

        ``input_ids``: ``[B] int64`` on the device, fed instead of each ``seq.last_token_id``
        (overlap scheduling launches a step before the host has the previous step's tokens).
        The step's KV record of each sequence (:class:`DecodeKVRecord`) goes into its report, or,
        when ``kv_records`` is given, into that list instead, in ``seqs`` order (overlap
        scheduling applies a record only once its row's token is taken).

        On FlashInfer the step runs ``batch_bucket(B)`` rows: padding rows read token 0 at
        position 0 and write and attend only the cache's scratch page; their logits are dropped.
        Nothing here waits for the device: host values go up with non-blocking copies.
        """
        self.pages.prepare_decode(seqs)
        count = len(seqs)
        selecting = self.gate.selecting(seqs)  # one decision per step, for layouts and groups
        page_counts = self.layouts.page_counts(seqs, selecting)
        caller_seqs = seqs
        # A backend that splits unequal rows into calls runs them longest first.
        order = longest_first(page_counts) if self.backend.prefers_longest_first else None
        if order is not None:
            seqs = [seqs[i] for i in order]
            selecting = [selecting[i] for i in order]
            page_counts = [page_counts[i] for i in order]
            if input_ids is not None:
                input_ids = input_ids[torch.tensor(order).to(self.device, non_blocking=True)]
        padded = self.batch_bucket(count) if self.pad_batches else count
        width = self.width_bucket(max(s.held_pages for s in seqs))
        table, scratch = self.pages.table.table, self.kv.scratch_page
        # A graph step writes its inputs into the tensors its graphs read (no copies before replay).
        out = None
        if self.graphs is not None and TRITON_AVAILABLE:
            out = self.graphs.input_buffers(padded, width, table.dtype, self.device)
        inputs = build_decode_inputs(
            seqs,
            padded,
            width,
            table,
            scratch,
            self.page_size,
            self.num_kv_heads,
            self.device,
            input_ids,
            out,
        )
        last_page_len = inputs.last_page_len
        layer_layouts = self.layouts.layer_layouts(
            page_counts, last_page_len, inputs.last_page_len_host, width, padded - count
        )
        groups = self._policy_groups(seqs, selecting, last_page_len, width, padded)
        distinct = distinct_layouts(layer_layouts)
        self.backend.begin_decode_step(distinct)
        if self.graphs is not None:  # every step shape is capturable (see cuda_graphs.py)
            step = DecodeStep(
                inputs.input_ids,
                inputs.positions,
                inputs.write_slots,
                inputs.base,
                layer_layouts,
                groups,
                _reads_metadata(seqs),
            )
            logits = self.graphs.run(step)[:count]
        else:
            attention = DecodeAttention(
                self.kv,
                self.backend,
                inputs.write_slots,
                inputs.base,
                layer_layouts,
                groups,
                self.num_kv_heads,
                _reads_metadata(seqs),
                self.streams,
            )
            try:
                hidden = self.model(inputs.input_ids, inputs.positions, attention)
            finally:
                attention.finish()
            logits = self.model.compute_logits(hidden)[:count]
            self.ungraphed_decodes += 1
        for seq in seqs:
            seq.num_cached_tokens += 1
        records = decode_kv_records(seqs, page_counts, selecting, self.num_kv_heads, self.num_layers)
        if order is not None:  # back to the caller's order
            caller_row = sorted(range(count), key=order.__getitem__)  # the inverse permutation
            logits = logits[torch.tensor(caller_row).to(self.device, non_blocking=True)]
            records = [records[row] for row in caller_row]
        if kv_records is None:
            for seq, record in zip(caller_seqs, records, strict=True):
                record.apply(seq.kv_report)
        else:
            kv_records.extend(records)
        return logits

    @staticmethod
    def batch_bucket(count: int) -> int:
        """The batch size a graph step runs: 1, 2, 4, 8, then multiples of 8 up to 64, then of
        32. Padding to a few sizes lets one captured graph serve a batch that shrinks and grows
        (nano-vllm and vLLM capture per bucket likewise); at most 7 rows pad up to 64, 31 above."""
        if count <= 8:
            return 1 << (count - 1).bit_length()
        step = 8 if count <= 64 else 32
        return -(-count // step) * step

    def width_bucket(self, held: int) -> int:
        """The page-table width a step uses: a power of two >= ``held`` (at least 8) up to
        ``WIDTH_STEP`` pages, then a multiple of ``WIDTH_STEP``; capped at the table's width.
        Bucketing keeps the step's tensor shapes fixed for many steps (one captured CUDA graph
        serves them); the linear steps keep a long request from scoring and ranking up to twice
        the pages it holds (2049 pages: 2304 wide, not 4096)."""
        bucket = (
            max(8, 1 << (held - 1).bit_length())
            if held <= WIDTH_STEP
            else -(-held // WIDTH_STEP) * WIDTH_STEP
        )
        return min(self.pages.table.max_pages_per_seq, bucket)

    def graph_stats(self) -> dict[str, int]:
        """CUDA-graph counters: ``replays``, ``eager_steps`` (no graph for the shape yet, or graphs
        off), ``captures``, ``evictions`` (least recently used graphs dropped), ``cached``."""
        if self.graphs is None:
            eager = self.ungraphed_decodes
            return {"replays": 0, "eager_steps": eager, "captures": 0, "evictions": 0, "cached": 0}
        return self.graphs.stats()

    def reset_counters(self) -> None:
        """Zero the graph counters (:meth:`graph_stats`; captured graphs stay), the selection
        gate's (:meth:`selection_stats`) and the kept group tensors' (``group_tensors``)."""
        self.ungraphed_decodes = 0
        self.group_tensors.reused = self.group_tensors.built = 0
        if self.graphs is not None:
            self.graphs.reset_counters()
        self.gate.skipped_rows.clear()
        self.gate.skipped_groups.clear()

    def selection_stats(self) -> dict[str, dict[str, int]]:
        """The selection gate's counters, per policy: ``skipped_rows`` (sequence-steps over budget
        that attended densely because selection could not pay) and ``skipped_groups`` (steps in
        which the policy's whole group did); empty under ``selection="exact"``."""
        return {
            "skipped_rows": dict(self.gate.skipped_rows),
            "skipped_groups": dict(self.gate.skipped_groups),
        }

    def _policy_groups(
        self,
        seqs: list[Sequence],
        selecting: list[bool],
        last_page_len: torch.Tensor,
        width: int,
        step_rows: int,
    ) -> list[PolicyGroup]:
        """:func:`~lil_sparse.engine.policy_groups.build_policy_groups` over this runner's pages."""
        return build_policy_groups(
            seqs, selecting, last_page_len, width, step_rows, self.pages, self.layouts, self.group_tensors
        )


def _reads_metadata(seqs: list[Sequence]) -> bool:
    """Whether any request of the step reads key metadata (only their own pages, so skipping the
    update when none does loses nothing)."""
    return any(get_policy(seq.policy).reads_key_metadata for seq in seqs)
