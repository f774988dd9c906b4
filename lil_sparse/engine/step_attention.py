"""The model's ``AttentionFn`` for a decode step: cache writes, page selection, attention.

Decode writes one token per sequence, assembles each layer's selected pages from the policy
groups (a loop over at most five policies, never over requests or pages) and runs the backend on
the step's layouts. Prefill's counterpart is :mod:`lil_sparse.engine.prefill_attention`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import InitVar, dataclass, field

import torch

from lil_sparse.attention.backend import AttentionBackend
from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.engine.side_streams import SideStreams
from lil_sparse.kernels import fused_selection_enabled
from lil_sparse.kv import KVCache
from lil_sparse.policies import PolicyBatch, SelectionPolicy


@dataclass
class PolicyGroup:
    """The rows of a decode step that run one policy; ``batch.rows`` index the step's rows.

    What is the same in every layer is computed once per step here, so a layer's selection is
    two kernels (scores, then :func:`~lil_sparse.kernels.page_select.select_pages`):
    ``newest: [n, 1] int32`` (each row's newest page), ``newest_at: [n, 1] int64`` (where it
    goes: ``select_count - 1``, which is also the number of older pages a sparse layer takes)
    ``all_rows`` (the group is the whole step, so no row indexing is needed) and ``sole`` (it
    holds every sequence of the step, padding rows aside). ``known_newest``: ``(newest,
    newest_at)`` computed from this very ``batch`` already (:func:`newest_pages`; a group whose
    tensors a step keeps from the one before), else computed here.
    """

    policy: SelectionPolicy
    batch: PolicyBatch
    min_dense_layers: int  # every row attends densely below this layer
    max_dense_layers: int  # no row attends densely from this layer on
    all_rows: bool = False
    sole: bool = False
    known_newest: InitVar[tuple[torch.Tensor, torch.Tensor] | None] = None
    newest: torch.Tensor = field(init=False)
    newest_at: torch.Tensor = field(init=False)

    def __post_init__(self, known_newest: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.newest, self.newest_at = newest_pages(self.batch) if known_newest is None else known_newest


def newest_pages(batch: PolicyBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(newest [n, 1] int32, newest_at [n, 1] int64)`` of ``batch``'s rows: each row's newest
    page and where a selection puts it (``select_count - 1``). Two device ops, no host sync."""
    return batch.table.gather(1, batch.held.unsqueeze(1) - 1), batch.select_count.unsqueeze(1) - 1


class DecodeAttention:
    def __init__(
        self,
        kv: KVCache,
        backend: AttentionBackend,
        write_slots: torch.Tensor,
        base_page_ids: torch.Tensor,
        layer_layouts: list[DecodeLayout],
        groups: list[PolicyGroup],
        num_kv_heads: int,
        update_metadata: bool = True,
        streams: SideStreams | None = None,
    ) -> None:
        """``streams``: run each selecting group's kernels on a lane of its own and the observers
        on another (:mod:`lil_sparse.engine.side_streams`); None runs everything on the current
        stream. With streams, call :meth:`finish` once after the model's forward."""
        self.kv = kv
        self.streams = streams
        self._observed: list[tuple[torch.Tensor, ...]] = []  # read on the observers' lane
        self.backend = backend
        self.write_slots = write_slots  # [B, Hkv] int64
        self.base_page_ids = base_page_ids  # [rows, width] int32: every held page, newest last
        self.layer_layouts = layer_layouts
        self.groups = groups
        self.num_kv_heads = num_kv_heads
        self.update_metadata = update_metadata
        self.observers = [g for g in groups if g.policy.observes_attention]  # once per step
        # Observers that attend the same pages in every layer observe once, after the last layer,
        # when the attention gives its lse (:meth:`_observe_step`); else after each layer.
        self.defer_observation = bool(self.observers) and not any(
            g.policy.selects_per_layer for g in self.observers
        )
        self.num_layers = kv.k.shape[0]
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (q_rows, lse) of layers 0, 1, ..

    def __call__(self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.kv.write(
            layer_index, self.write_slots, k, v, distinct_pages=True, update_metadata=self.update_metadata
        )
        return self._attend(layer_index, q)

    def rotate_and_attend(
        self,
        layer_index: int,
        qk: torch.Tensor,
        q_heads: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor:
        """RoPE, the K/V append and the attention of one layer from pre-RoPE ``qk`` (the
        :class:`lil_sparse.models.attention_fn.RotatingAttentionFn` seam; the RoPE and the write
        are :meth:`KVCache.write_rotated`, one kernel on CUDA)."""
        q = self.kv.write_rotated(
            layer_index, self.write_slots, qk, q_heads, cos, sin, v, update_metadata=self.update_metadata
        )
        return self._attend(layer_index, q)

    def append_target(self, layer_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Where the model's projection kernel may write this layer's rotated keys and values
        itself (the :class:`lil_sparse.models.attention_fn.AppendingAttentionFn` seam): ``(k_cache,
        v_cache, write_slots)``, or None when this step updates key metadata, which only the
        append kernel folds in (:meth:`KVCache.write_rotated`)."""
        if self.update_metadata:
            return None
        return self.kv.k[layer_index], self.kv.v[layer_index], self.write_slots

    def attend_appended(self, layer_index: int, q: torch.Tensor) -> torch.Tensor:
        """The attention of one layer whose K/V the model wrote to :meth:`append_target` itself,
        for its post-RoPE ``q: [B, Hq, D]``."""
        return self._attend(layer_index, q)

    def _attend(self, layer_index: int, q: torch.Tensor) -> torch.Tensor:
        """Select and attend for ``q: [B, Hq, D]`` (post-RoPE) once this layer's K/V are written."""
        batch_size, num_heads, head_dim = q.shape
        q_rows = q.view(batch_size * self.num_kv_heads, num_heads // self.num_kv_heads, head_dim)
        page_ids = self._select(layer_index, q_rows)
        args = (layer_index, q_rows, self.kv.k[layer_index], self.kv.v[layer_index], page_ids)
        if not self.observers:
            out = self.backend.decode(*args, self.layer_layouts[layer_index])
            return out.view(batch_size, num_heads, head_dim)
        out, lse = self.backend.decode_with_lse(*args, self.layer_layouts[layer_index])
        if lse is not None and self.defer_observation:
            if layer_index != len(self._pending):  # else a layer's mass would be lost or doubled
                raise RuntimeError(
                    f"DecodeAttention: layer {layer_index} after {len(self._pending)} layers; observing "
                    f"attention once per step needs layers 0..{self.num_layers - 1}, each once, in order"
                )
            self._pending.append((q_rows, lse))
            if layer_index == self.num_layers - 1:
                pending, self._pending = self._pending, []
                self._launch_observation(
                    tuple(t for layer in pending for t in layer), lambda: self._observe_step(pending)
                )
        else:
            self._launch_observation(
                (q_rows, page_ids) if lse is None else (q_rows, page_ids, lse),
                lambda: self._observe(layer_index, q_rows, page_ids, lse),
            )
        return out.view(batch_size, num_heads, head_dim)

    def _launch_observation(self, keep: tuple[torch.Tensor, ...], observe: Callable[[], None]) -> None:
        """Run ``observe`` (kernels reading ``keep``) inline or on the observers' lane."""
        if self.streams is None or any(g.sole for g in self.observers):
            # A group of every sequence runs inline. Measured when H2O observed after every layer
            # (side_streams.py: 8B/batch 8/32k h2o 6.53 ms inline, 6.60 on a lane; a mixed step
            # 18.09 inline, 17.85 on a lane); not measured again since it observes once per step.
            observe()
            return
        # A latency-bound pass over a mixed step's rows: overlaps the rest of the step (once per
        # step: the last layer's projections and MLP). The lane reads ``keep`` after this call
        # returns: keep it from the allocator until finish() (a freed block could be handed to
        # the next layer on the current stream). Recorded before the launch, so that finish()
        # joins the lane even if it raises.
        lane = self.streams.observer()
        self._observed.append(keep)
        with torch.cuda.stream(lane):
            observe()

    def finish(self) -> None:
        """Order the current stream after the observers' lane (once per step, after the model's
        forward, also when it raised: callers use ``finally``; a no-op without streams or
        observers)."""
        if self._observed and self.streams is not None:
            self.streams.join([self.streams.observer_lane])
            self._observed.clear()

    def _observe(
        self, layer: int, q_rows: torch.Tensor, page_ids: torch.Tensor, lse: torch.Tensor | None
    ) -> None:
        for group in self.observers:
            rows = group.batch.rows
            group_lse = None if lse is None else (lse if group.all_rows else lse[rows])
            queries = q_rows if group.all_rows else q_rows[rows]
            group_pages = page_ids if group.all_rows else page_ids[rows]
            group.policy.observe_decode(layer, queries, group_pages, group.batch, self.kv, group_lse)

    def _observe_step(self, pending: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The step's observation after its last layer: every layer's queries and lse stacked,
        one :meth:`SelectionPolicy.observe_decode_layers` call per observing group (H2O: two
        kernels per step instead of one per layer). The observers' rows attend ``base_page_ids``
        in every layer (they do not select per layer: :attr:`defer_observation`). ``pending``:
        ``(q_rows [rows, G, D], lse [rows, G] float32)`` of layers 0 to L - 1, in order."""
        q_layers = torch.stack([q_rows for q_rows, _ in pending])  # [L, rows, G, D]
        lse_layers = torch.stack([lse for _, lse in pending])  # [L, rows, G]
        for group in self.observers:
            queries, pages, lse = q_layers, self.base_page_ids, lse_layers
            if not group.all_rows:
                rows = group.batch.rows
                queries, pages, lse = q_layers[:, rows], pages[rows], lse_layers[:, rows]
            group.policy.observe_decode_layers(queries, pages, group.batch, self.kv, lse)

    def _select(self, layer: int, q_rows: torch.Tensor) -> torch.Tensor:
        """The page ids layer ``layer`` attends: ``base_page_ids`` when no group selects here or
        when the selection went straight into the backend's page list (the fused path), else a
        copy with the selecting rows' choices (the reference path)."""
        groups = [g for g in self.groups if g.policy.selects_per_layer and layer >= g.min_dense_layers]
        if not groups:
            return self.base_page_ids
        target = None
        if fused_selection_enabled(q_rows, q_rows.shape[-1]):
            target = self.backend.selection_target(self.base_page_ids, self.layer_layouts[layer])
        if target is None:
            return self._select_reference(layer, q_rows, groups)
        indptr, indices = target
        if self.streams is None or len(groups) == 1:
            for group in groups:
                self._select_fused(layer, q_rows, group, indptr, indices)
            return self.base_page_ids
        lanes = self.streams.fork(len(groups))  # groups write disjoint rows of the page list
        try:
            for group, lane in zip(groups, lanes, strict=True):
                with torch.cuda.stream(lane):
                    self._select_fused(layer, q_rows, group, indptr, indices)
        finally:  # before the attention reads the page list, and on an error (an unjoined
            self.streams.join(lanes)  # fork would fail a capture and race freed blocks)
        return self.base_page_ids

    def _select_fused(
        self,
        layer: int,
        q_rows: torch.Tensor,
        group: PolicyGroup,
        indptr: torch.Tensor,
        indices: torch.Tensor,
    ) -> None:
        """One group's fused selection (:func:`select_fused`) over its rows of ``q_rows``, written
        straight into the backend's page list (``indptr``, ``indices``)."""
        queries = q_rows if group.all_rows else q_rows[group.batch.rows]
        select_fused(layer, queries, group, self.kv, indptr, indices)

    def _select_reference(self, layer: int, q_rows: torch.Tensor, groups: list[PolicyGroup]) -> torch.Tensor:
        """The selection in PyTorch (``torch.topk``, gathers and scatters into a copy of the base
        page ids): any backend and device; the reference of the fused path."""
        page_ids = self.base_page_ids.clone()
        for group in groups:
            batch = group.batch
            queries = q_rows if group.all_rows else q_rows[batch.rows]
            older = batch.table.gather(1, group.policy.select_slots(layer, queries, batch, self.kv))
            chosen = torch.cat([older, group.newest], dim=1)
            # The newest page goes last among each row's select_count entries.
            chosen.scatter_(1, group.newest_at, group.newest)
            if layer < group.max_dense_layers:
                dense = (layer < batch.dense_layers).unsqueeze(1)
                chosen = torch.where(dense, batch.table[:, : chosen.shape[1]], chosen)
            if group.all_rows:
                page_ids[:, : chosen.shape[1]] = chosen
            else:
                page_ids[batch.rows, : chosen.shape[1]] = chosen
        return page_ids


def select_fused(
    layer: int,
    queries: torch.Tensor,
    group: PolicyGroup,
    kv: KVCache,
    indptr: torch.Tensor,
    indices: torch.Tensor,
) -> None:
    """One group's scores (:meth:`SelectionPolicy.selection_scores` of ``queries: [n, G, D]``,
    the group's rows) and :func:`~lil_sparse.kernels.page_select.select_pages`, written straight
    into a planned decode's page list (``indptr: [R + 1] int32``, ``indices`` int32): two
    kernels, no host sync. Rows still in their dense layers take every held page."""
    from lil_sparse.kernels.page_select import select_pages

    batch = group.batch
    scores = group.policy.selection_scores(layer, queries, batch, kv)
    older = group.newest_at.view(-1)  # select_count - 1 older pages, then the newest
    if layer < group.max_dense_layers:  # rows still in their dense layers take every page
        older = torch.where(layer < batch.dense_layers, batch.held - 1, older)
    select_pages(
        scores.scores,
        older,
        batch.table,
        group.newest.view(-1),
        None if group.all_rows else batch.rows,
        indptr,
        indices,
        scores.share,
        (batch.held, batch.sink_pages, batch.recent_pages) if scores.keep_windows else None,
    )
