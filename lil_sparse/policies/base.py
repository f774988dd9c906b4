"""The selection-policy interface.

A policy decides which KV pages a decode step attends. It works on a whole group of attention
rows at once (every row of the step whose request chose this policy), on the device, with no
loop over requests or pages. Two kinds:

- **eviction** policies (sink, h2o) keep at most ``budget`` pages per row and free the rest; the
  step attends every page still held. :meth:`keep_scores` ranks pages, higher is kept.
- **retention** policies (quest, infllm) keep all KV and pick pages per layer with
  :meth:`select_slots`.

Pages are whole: where a paper's rule is per token, each policy file says how it maps to pages.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import ClassVar

import torch

from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.kv.kv_cache import KVCache


@dataclass(frozen=True)
class PolicyBatch:
    """The rows of one step that run one policy. ``n`` rows, one per (sequence, KV head).

    - ``rows: [n] int64``: the rows' indices in the step (``b * num_kv_heads + h``).
    - ``table: [n, width] int32``: each row's held pages, oldest first, newest at ``held - 1``.
    - ``held: [n] int64``: pages each row holds.
    - ``select_count: [n] int64``: pages to attend in a sparse layer, the newest included.
    - ``sink_pages, recent_pages: [n] int64``: per-request window sizes in pages.
    - ``dense_layers: [n] int64``: leading layers that attend every held page.
    - ``max_select``: ``max(select_count)`` on the host.
    - ``uniform_select``: every row selects exactly ``max_select`` pages, so the order of the
      top-k result does not matter (selection skips sorting it).
    - ``layout``: the group's own decode layout for sparse layers (used to observe attention).
    """

    rows: torch.Tensor
    table: torch.Tensor
    held: torch.Tensor
    select_count: torch.Tensor
    sink_pages: torch.Tensor
    recent_pages: torch.Tensor
    dense_layers: torch.Tensor
    max_select: int
    num_kv_heads: int
    layout: DecodeLayout | None = None
    uniform_select: bool = False

    def slot_index(self) -> torch.Tensor:
        """``[1, width] int64`` slot positions, for index arithmetic."""
        return torch.arange(self.table.shape[1], device=self.table.device).unsqueeze(0)


class SelectionPolicy(ABC):
    """Base class; subclasses override what their kind needs."""

    name: ClassVar[str]
    evicts: ClassVar[bool] = False
    selects_per_layer: ClassVar[bool] = False
    observes_attention: ClassVar[bool] = False
    reads_key_metadata: ClassVar[bool] = False  # needs key min/max/sum/mean kept up to date
    uses_budget: ClassVar[bool] = True  # False: attends every held page whatever the budget (full)
    has_dense_layers: ClassVar[bool] = False  # reads SparseOptions.dense_layers (Quest)
    reads_sink_tokens: ClassVar[bool] = False  # reads SparseOptions.sink_tokens (sink, InfLLM)
    reads_recent_tokens: ClassVar[bool] = False  # reads SparseOptions.recent_tokens (H2O, InfLLM)
    # What one selecting layer reads per held page to score it (the selection gate's cost model,
    # lil_sparse/engine/selection_gate.py): ``metadata_vectors`` head_dim-vectors in the KV
    # cache's dtype.
    metadata_vectors: ClassVar[int] = 0

    def attended_pages(self, held: int, budget_pages: int) -> int:
        """Pages a sparse layer attends for a row holding ``held`` pages (host ints)."""
        return held if self.evicts or not self.uses_budget else min(held, budget_pages)

    def metadata_bytes_per_page(self, head_dim: int, kv_dtype: torch.dtype) -> int:
        """Bytes of page metadata one selecting layer reads per held page of one KV head."""
        return self.metadata_vectors * head_dim * kv_dtype.itemsize

    def keep_scores(self, batch: PolicyBatch, kv: KVCache) -> torch.Tensor:
        """Eviction policies: ``[n, width] float32`` score per held slot; the highest are kept.

        Slots that must survive score ``+inf``. Padding beyond ``held`` is ignored by the caller.
        """
        raise NotImplementedError(f"{self.name} does not evict")

    def selection_scores(self, layer: int, q: torch.Tensor, batch: PolicyBatch, kv: KVCache) -> PageScores:
        """Retention policies: per-slot scores of each row (``q: [n, G, D]``), and how they rank
        (:class:`PageScores`). The engine takes the ``select_count - 1`` best older pages (fused:
        :func:`lil_sparse.kernels.page_select.select_pages`; reference: :meth:`select_slots`).
        """
        raise NotImplementedError(f"{self.name} does not select per layer")

    def select_slots(self, layer: int, q: torch.Tensor, batch: PolicyBatch, kv: KVCache) -> torch.Tensor:
        """Retention policies, the PyTorch reference of the selection: ``[n, >= max_select - 1]
        int64`` slots of older pages to attend, best first (:meth:`selection_scores` ranked, then
        ``torch.topk``). Row ``r``'s first ``select_count[r] - 1`` entries are used; the newest
        page is appended by the caller.
        """
        ranked = self.selection_scores(layer, q, batch, kv).ranked(batch)
        return top_slots(ranked, batch.max_select - 1, ordered=not batch.uniform_select)

    def observe_decode(
        self,
        layer: int,
        q: torch.Tensor,
        page_ids: torch.Tensor,
        batch: PolicyBatch,
        kv: KVCache,
        lse: torch.Tensor | None = None,
    ) -> None:
        """Called after a decode layer with the group's queries ``[n, G, D]``, attended pages and,
        when the attention kernel gives it, each query's log-sum-exp ``[n, G]`` (base 2, see
        :meth:`AttentionBackend.decode_with_lse`)."""

    def observe_decode_layers(
        self,
        q_layers: torch.Tensor,
        page_ids: torch.Tensor,
        batch: PolicyBatch,
        kv: KVCache,
        lse_layers: torch.Tensor,
    ) -> None:
        """Called once after a decode step's last layer instead of :meth:`observe_decode` after
        each, when the step's attention gave the log-sum-exp and the group's rows attend the same
        pages in every layer (policies that do not select per layer): ``q_layers: [L, n, G, D]``,
        ``lse_layers: [L, n, G] float32`` (base 2), ``page_ids: [n, width] int32``. The default
        calls :meth:`observe_decode` layer by layer, in order."""
        for layer in range(q_layers.shape[0]):
            self.observe_decode(layer, q_layers[layer], page_ids, batch, kv, lse_layers[layer])

    def observe_prefill(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        pages: torch.Tensor,
        kv: KVCache,
        prompt_tokens: int,
    ) -> None:
        """Called after a prefill layer for one prompt chunk of a sequence of this policy.

        ``q: [C, Hq, D]`` the chunk's queries, positions ``T - C .. T - 1``; ``k: [T, Hkv, D]``
        every key up to the chunk's end; ``pages: [Hkv, T] int64`` page of each token per head;
        ``prompt_tokens`` the whole prompt's length (``T`` when the prompt is one chunk).
        """


@dataclass(frozen=True)
class PageScores:
    """A selecting policy's scores for one layer, before ranking.

    - ``scores: [n, width] float32``: one row per (sequence, KV head) row of the batch, ``-inf``
      from slot ``held - 1`` on (the newest page is added by the caller, never chosen).
    - ``share``: a row ranks by the sum of the ``share`` consecutive rows it belongs to (InfLLM:
      a sequence's KV heads pick the same blocks; 1: each row alone).
    - ``keep_windows``: after the sum, the batch's ``sink_pages`` first and ``recent_pages`` last
      held slots rank ``+inf`` and slots from ``held - 1`` on ``-inf`` again.
    """

    scores: torch.Tensor
    share: int = 1
    keep_windows: bool = False

    def ranked(self, batch: PolicyBatch) -> torch.Tensor:
        """``[n, width] float32`` ranking scores (the reference of what the fused kernel reads)."""
        scores = self.scores
        if self.share > 1:
            summed = scores.view(-1, self.share, scores.shape[1]).sum(dim=1)
            scores = summed.repeat_interleave(self.share, dim=0)
        if self.keep_windows:
            slots = batch.slot_index()
            forced = (slots < batch.sink_pages.unsqueeze(1)) | (
                slots >= (batch.held - batch.recent_pages).unsqueeze(1)
            )
            scores = mask_beyond(scores.masked_fill(forced, float("inf")), batch.held - 1, batch)
        return scores


def mask_beyond(scores: torch.Tensor, limit: torch.Tensor, batch: PolicyBatch) -> torch.Tensor:
    """Set ``scores[r, j] = -inf`` for slots ``j >= limit[r]``. ``scores: [n, width]``."""
    return scores.masked_fill(batch.slot_index() >= limit.unsqueeze(1), float("-inf"))


def top_slots(scores: torch.Tensor, count: int, ordered: bool = True) -> torch.Tensor:
    """Indices of the ``count`` highest scores per row, best first (in no particular order when
    ``ordered`` is false: callers that use all ``count`` of them skip the sort). ``[n, width] ->
    [n, count]``."""
    count = min(count, scores.shape[1])
    if count <= 0:
        return torch.zeros(scores.shape[0], 0, dtype=torch.long, device=scores.device)
    return torch.topk(scores, count, dim=1, sorted=ordered).indices
