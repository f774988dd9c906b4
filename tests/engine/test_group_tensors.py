"""Policy groups' tensors kept from step to step (:class:`GroupTensors`) must equal the ones built
anew at every step: through page growth, H2O's evictions, requests finishing and new ones taking
their block-table slots. The block table's per-slot versions, which decide reuse, move with every
write; and no code writes the table but through its methods."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.kv import BlockTable
from lil_sparse.testing.group_check import NEW_TOKENS, check_kept_groups, group_workload


@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "overlap"])
def test_kept_group_tensors_equal_fresh_ones_at_every_step(tiny_model_dir: Path, overlap: bool) -> None:
    config = EngineConfig(
        model=str(tiny_model_dir),
        kv_cache_tokens=4096,
        max_batch_size=4,
        guardian_workers=0,
        overlap_scheduling=overlap,
    )
    engine = LLMEngine.from_config(config)
    runner = engine.runner
    found = check_kept_groups(runner)
    prompts, options = group_workload(max_token=200)
    reports = engine.generate(prompts, options)
    kept = runner.group_tensors
    engine.close()
    assert [len(r.output_token_ids) for r in reports] == list(NEW_TOKENS)
    mismatches = [entry for entry in found if entry != "checked"]
    assert mismatches == []
    assert found.count("checked") > 100  # groups checked, over every decode step
    assert kept.reused > kept.built > 0  # most steps keep their groups; page changes rebuild them


def test_every_write_acquire_and_release_moves_the_slots_version() -> None:
    table = BlockTable(max_slots=3, num_kv_heads=2, max_pages_per_seq=4, device=torch.device("cpu"))
    slot = table.acquire_slot()
    other = table.acquire_slot()
    seen = (table.versions[slot], table.versions[other])
    table.write_pages([slot, slot], [0, 1], [0, 0], [5, 6])
    assert table.versions[slot] > seen[0] and table.versions[other] == seen[1]
    before = table.versions[slot]
    table.write_pages([], [], [], [])  # nothing written, nothing moved
    assert table.versions[slot] == before
    rows = torch.tensor([[[7, 8], [9, 10]]], dtype=torch.int32)
    table.write_rows([other], torch.tensor([other]), rows)
    assert table.versions[other] > seen[1] and table.versions[slot] == before
    assert table.table[other, :, :2].tolist() == [[7, 8], [9, 10]]
    released = table.versions[slot]
    table.release_slot(slot)
    assert table.versions[slot] > released
    again = table.acquire_slot()  # the freed slot, for a new sequence
    assert again == slot and table.versions[slot] > released + 1


# Every use of the raw block table outside BlockTable, each a read (a gather, an index, a kernel
# that only reads it): a new one must be reviewed and added here.
KNOWN_TABLE_READS = {
    ("engine/page_manager.py", "self.device = table.table.device"),
    (
        "engine/page_manager.py",
        "table = self.table.table[slot_index, :, :width].reshape(len(rows) * heads, width)",
    ),
    ("engine/model_runner.py", "return self.pages.table.table[seq.slot, :, : seq.held_pages].long()"),
    ("engine/model_runner.py", "table, scratch = self.pages.table.table, self.kv.scratch_page"),
}


def test_nothing_writes_the_block_table_but_its_methods() -> None:
    """A write past :meth:`BlockTable.write_pages` / :meth:`BlockTable.write_rows` would leave a
    slot's version behind, and kept group tensors would go stale. Every place outside
    block_table.py that touches the raw table is one of the reviewed reads above."""
    root = Path(__file__).resolve().parents[2] / "lil_sparse"
    uses = {
        (str(path.relative_to(root)), line.strip())
        for path in root.rglob("*.py")
        if path.name != "block_table.py"
        for line in path.read_text().splitlines()
        if "table.table" in line
    }
    assert uses == KNOWN_TABLE_READS
