"""The selection gate: a selecting policy's rows attend densely in a step where selection cannot pay.

Per selecting layer, selecting pages for a group of rows costs a fixed latency (its kernel
launches: scoring, top-k, packing) plus reading each held page's metadata, and saves reading the
K/V of the pages it leaves out. At 1.5B / 4k / batch 1 a whole layer's dense attention reads
~4 MB of KV (~1 us on an H200) while selection costs tens of microseconds, so sparse loses
(docs/bench/decode_targets.md; issue 11, speed-T6). :class:`SelectionCost` holds the device
constants and the rule; :class:`SelectionGate` applies it once per decode step, on host ints
only (no device sync), and counts the rows it sent down the dense path.

Under ``EngineConfig.selection == "when_faster"`` a row's output depends on its batch mates of
the same policy (they decide together whether the group selects); GPU logits are not batch
invariant anyway. ``"exact"`` honours every budget (the eval study and the oracle tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lil_sparse.config import SELECTION_MODES
from lil_sparse.engine.sequence import Sequence
from lil_sparse.policies import get_policy

__all__ = ["SELECTION_MODES", "SelectionCost", "SelectionGate"]

# Device constants measured on the H200 with fused selection (2026-11-30 12:54 UTC, main after the
# fused page-selection kernels; `bench/decode_e2e.py --models qwen1.5b,llama8b --contexts
# 4096,32768 --batches 1,8,32 --runs full:0,quest:1024,infllm:1024 --selection exact`, then
# `PYTHONPATH=. python bench/gate_constants.py` on its JSON, docs/bench/decode_selection_exact.json):
# copy bandwidth 4251 GB/s; latency per selecting layer 11-26 us at batch 1 and at 4k / batch 8,
# 30-39 us at 32k / batch 8, 17-63 us at batch 32 (the "fixed" cost grows with rows and width),
# medians 23.7 us (quest) and 18.8 us (infllm) over the twelve cells per policy. With 24 us the
# rule picks the faster side in every cell of that run where the two differ by more than 5%.
# Before the fused kernels the same cost was 50-90 us per layer.
DEFAULT_HBM_BYTES_PER_SECOND = 4.2e12
DEFAULT_SELECTION_LATENCY_US = 24.0


@dataclass(frozen=True, slots=True)
class SelectionCost:
    """Device constants of the gate and its rule.

    ``hbm_bytes_per_second``: memory bandwidth (bytes/s); ``selection_latency_us``: fixed time of
    one selecting layer's selection (microseconds), whatever its size. Raises ``ValueError``
    naming the field for a bandwidth <= 0 or a negative latency.
    """

    hbm_bytes_per_second: float = DEFAULT_HBM_BYTES_PER_SECOND
    selection_latency_us: float = DEFAULT_SELECTION_LATENCY_US

    def __post_init__(self) -> None:
        if not self.hbm_bytes_per_second > 0:
            raise ValueError(f"hbm_bytes_per_second: must be > 0, got {self.hbm_bytes_per_second}")
        if not self.selection_latency_us >= 0:
            raise ValueError(f"selection_latency_us: must be >= 0, got {self.selection_latency_us}")

    @property
    def latency_bytes(self) -> float:
        """The fixed latency as bytes the device could have read meanwhile."""
        return self.selection_latency_us * self.hbm_bytes_per_second / 1e6

    def pays(self, rows: list[tuple[int, int]], page_bytes: int, metadata_bytes_per_page: int) -> bool:
        """Whether one selecting layer's selection saves more bytes than it costs.

        ``rows``: ``(held_pages, select_pages)`` per attention row (one per sequence and KV head);
        ``page_bytes``: K+V of one one-head page (``2 * page_size * head_dim * dtype bytes``);
        ``metadata_bytes_per_page``: what selection reads per held page. Selects only when
        ``sum(held - select) * page_bytes > latency_bytes + sum(held) * metadata_bytes_per_page``
        (a tie attends densely: equal cost, exact attention).
        """
        saved = sum(held - select for held, select in rows) * page_bytes
        cost = self.latency_bytes + sum(held for held, _ in rows) * metadata_bytes_per_page
        return saved > cost


@dataclass(slots=True)
class SelectionGate:
    """Decides once per decode step which rows select; counts the rows it sent dense.

    ``mode``: one of :data:`SELECTION_MODES`; ``num_kv_heads``, ``page_size``, ``head_dim`` and
    ``kv_dtype`` describe the KV cache. ``skipped_rows`` / ``skipped_groups``: per policy, the
    sequence-steps and group-steps that would have selected but attended densely.
    """

    mode: str
    num_kv_heads: int
    page_size: int
    head_dim: int
    kv_dtype: torch.dtype
    cost: SelectionCost = field(default_factory=SelectionCost)
    skipped_rows: dict[str, int] = field(default_factory=dict)
    skipped_groups: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in SELECTION_MODES:
            raise ValueError(f"selection: must be one of {', '.join(SELECTION_MODES)}, got {self.mode!r}")

    @property
    def page_bytes(self) -> int:
        """K+V bytes of one one-head page."""
        return 2 * self.page_size * self.head_dim * self.kv_dtype.itemsize

    def selecting(self, seqs: list[Sequence]) -> list[bool]:
        """Per sequence: whether it runs selection this step. Only a selecting policy's request
        over its budget may; under ``when_faster`` its policy's group must also pay
        (:meth:`SelectionCost.pays`). Every other request attends its base pages."""
        over = [get_policy(s.policy).selects_per_layer and s.held_pages > s.budget_pages for s in seqs]
        if self.mode == "exact" or not any(over):
            return over
        by_policy: dict[str, list[int]] = {}
        for index, seq in enumerate(seqs):
            if over[index]:
                by_policy.setdefault(seq.policy, []).append(index)
        for name, indices in by_policy.items():
            rows = [(seqs[i].held_pages, seqs[i].budget_pages) for i in indices] * self.num_kv_heads
            metadata = get_policy(name).metadata_bytes_per_page(self.head_dim, self.kv_dtype)
            if not self.cost.pays(rows, self.page_bytes, metadata):
                for i in indices:
                    over[i] = False
                self.skipped_rows[name] = self.skipped_rows.get(name, 0) + len(indices)
                self.skipped_groups[name] = self.skipped_groups.get(name, 0) + 1
        return over
