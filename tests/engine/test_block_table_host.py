"""The block table's host copy of held page ids equals the device table at every step.

Release returns a finished request's pages from the host copy (no device read), so that copy
must follow admission, page growth, eviction after prefill and eviction at budget exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.options import POLICY_NAMES, RequestOptions, SparseOptions, StoppingOptions


def test_host_page_ids_follow_the_device_table(tiny_model_dir: Path) -> None:
    engine = LLMEngine.from_config(
        EngineConfig(
            model=str(tiny_model_dir),
            kv_cache_tokens=4096,
            max_batch_size=4,
            guardian_workers=0,
            poison_freed_pages=True,
        )
    )
    gen = torch.Generator().manual_seed(1)
    for policy, length in zip(POLICY_NAMES, (20, 70, 45, 90, 33), strict=True):  # sink, h2o evict
        engine.add_request(
            torch.randint(3, 300, (length,), generator=gen).tolist(),
            RequestOptions(
                stopping=StoppingOptions(max_new_tokens=40, ignore_eos=True),
                sparse=SparseOptions(policy=policy, budget_tokens=48, sink_tokens=16, dense_layers=1),
            ),
        )
    table = engine.pages.table
    checked = 0
    while engine.has_unfinished():
        engine.step()
        for seq in engine.scheduler.running:
            device = table.table[seq.slot, :, : seq.held_pages].flatten().tolist()
            assert sorted(table.held_pages(seq.slot)) == sorted(device)
            assert len(device) == seq.held_pages * table.num_kv_heads
            checked += 1
    assert checked > 100
    assert engine.pool.num_used == 0 and engine.pool.num_free == engine.pool.num_pages
    engine.close()
