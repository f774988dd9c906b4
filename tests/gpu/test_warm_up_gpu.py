"""The start-up warm-up on FlashInfer with CUDA graphs (lil_sparse/engine/warm_up.py): after it
a first request of a warmed batch size replays captured graphs from its first decode step (no
eager step, no capture inside the request), every policy runs, and the tokens are a cold
engine's.
"""

from __future__ import annotations

import pytest
from gpu_engine import gpu_engine

from lil_sparse.options import POLICY_NAMES, RequestOptions, SparseOptions, StoppingOptions

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")

PROMPT = [(3 + 7 * i) % 250 for i in range(40)]  # 3 pages of 16: one page table width bucket


def request(policy: str = "full", new_tokens: int = 10) -> RequestOptions:
    return RequestOptions(
        stopping=StoppingOptions(max_new_tokens=new_tokens, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=32, dense_layers=1),
    )


def test_a_first_request_after_warm_up_replays_from_its_first_step(tiny_gqa2_dir):
    warmed = gpu_engine(tiny_gqa2_dir, warm_up=True, poison_freed_pages=True)
    cold = gpu_engine(tiny_gqa2_dir, poison_freed_pages=True)
    try:
        report = warmed.warm_up_report
        assert report is not None and report.batch_sizes == (1, 2, 4)
        stats = warmed.stats()
        assert (stats.graph_replays, stats.eager_decodes, stats.kv_pages_used) == (0, 0, 0)
        (got,) = warmed.generate([PROMPT], [request()])
        stats = warmed.stats()
        # 10 tokens: 1 from the prefill, 9 decode steps (and overlap scheduling may launch one
        # ahead of the last token): all replayed, none eager.
        assert stats.eager_decodes == 0 and stats.graph_replays >= 9
        (expected,) = cold.generate([PROMPT], [request()])
        assert got.output_token_ids == expected.output_token_ids
        for policy in POLICY_NAMES:  # every policy still answers as on a cold engine
            (got,) = warmed.generate([PROMPT * 3], [request(policy)])
            (expected,) = cold.generate([PROMPT * 3], [request(policy)])
            assert got.output_token_ids == expected.output_token_ids, policy
    finally:
        warmed.close()
        cold.close()
