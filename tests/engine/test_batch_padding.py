"""Batch padding (CUDA-graph buckets) leaves every real row's result unchanged.

On CPU the runner does not pad; here it is told to, so the padding rows (token 0 at position 0,
the KV cache's scratch page) run through the reference backend next to real rows of every
policy. Reference attention is per row, so real rows must match the unpadded run: same tokens,
logits within fp32 GEMM noise (``atol 1e-4``; a matmul with more rows may sum in another order).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.engine.model_runner import ModelRunner
from lil_sparse.options import POLICY_NAMES, RequestOptions, SparseOptions, StoppingOptions


def run(model_dir: Path, pad: bool) -> tuple[list[list[int]], list[torch.Tensor]]:
    engine = LLMEngine.from_config(
        EngineConfig(model=str(model_dir), kv_cache_tokens=4096, max_batch_size=8, guardian_workers=0)
    )
    engine.runner.pad_batches = pad
    recorded: list[torch.Tensor] = []
    decode = engine.runner.decode

    def recording_decode(seqs):
        logits = decode(seqs)
        recorded.append(logits.clone())
        return logits

    engine.runner.decode = recording_decode  # type: ignore[method-assign]
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 200, (n,), generator=gen).tolist() for n in (20, 41, 9, 66, 33)]
    options = [
        RequestOptions(
            stopping=StoppingOptions(max_new_tokens=n, ignore_eos=True),
            sparse=SparseOptions(policy=policy, budget_tokens=32, sink_tokens=16, dense_layers=1),
        )
        for policy, n in zip(POLICY_NAMES, (30, 22, 14, 30, 9), strict=True)
    ]
    reports = engine.generate(prompts, options)
    pool_used = engine.pool.num_used
    engine.close()
    assert pool_used == 0  # the scratch page is no pool page
    return [r.output_token_ids for r in reports], recorded


def test_buckets() -> None:
    buckets = [ModelRunner.batch_bucket(n) for n in (1, 2, 3, 5, 8, 9, 17, 64, 65, 100)]
    assert buckets == [1, 2, 4, 8, 8, 16, 24, 64, 96, 128]


def test_padded_rows_do_not_change_real_rows(tiny_model_dir: Path) -> None:
    tokens, logits = run(tiny_model_dir, pad=False)
    padded_tokens, padded_logits = run(tiny_model_dir, pad=True)
    assert padded_tokens == tokens
    assert len(padded_logits) == len(logits)
    for want, got in zip(logits, padded_logits, strict=True):
        assert got.shape == want.shape  # padding rows' logits are dropped
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
