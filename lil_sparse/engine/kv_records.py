"""What one decode step adds to each request's KV report (pages attended, held, gate skips)."""

from __future__ import annotations

from dataclasses import dataclass

from lil_sparse.engine.sequence import Sequence
from lil_sparse.events import KVReport
from lil_sparse.policies import get_policy


@dataclass(frozen=True, slots=True)
class DecodeKVRecord:
    """What one decode step adds to a request's :class:`~lil_sparse.events.KVReport`: the pages
    it attended averaged over layers (dense layers attend every held page), the one-head pages
    it held (all KV heads; the report keeps the peak), and whether the selection gate sent it
    down the dense path although it was over budget."""

    attended_pages: int
    held_pages: int
    selection_skipped: bool

    def apply(self, report: KVReport) -> None:
        report.attended_pages_per_step.append(self.attended_pages)
        report.peak_pages = max(report.peak_pages, self.held_pages)
        report.selection_skipped_steps += self.selection_skipped


def decode_kv_records(
    seqs: list[Sequence],
    per_seq: list[tuple[int, int, int]],
    selecting: list[bool],
    num_kv_heads: int,
    num_layers: int,
) -> list[DecodeKVRecord]:
    """Each sequence's record of this step, in ``seqs`` order. ``per_seq``: (dense layers, pages
    a dense layer attends, pages a sparse layer attends) per sequence
    (:meth:`~lil_sparse.engine.decode_layouts.DecodeLayouts.page_counts`); ``selecting``: the
    selection gate's decision per sequence."""
    return [
        DecodeKVRecord(
            attended_pages=round((held * dense + sparse * (num_layers - dense)) / num_layers),
            held_pages=seq.held_pages * num_kv_heads,
            selection_skipped=not selects
            and seq.held_pages > seq.budget_pages
            and get_policy(seq.policy).selects_per_layer,
        )
        for seq, (dense, held, sparse), selects in zip(seqs, per_seq, selecting, strict=True)
    ]
