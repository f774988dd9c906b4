"""The threshold top-k / top-p filter (lil_sparse.sampling.nucleus) on CPU: its composition over
the PyTorch statement of FlashInfer's rule (TORCH_RULES) against the sort of filter_top_k_top_p.
The FlashInfer kernels themselves are compared in tests/gpu/test_nucleus_gpu.py."""

from __future__ import annotations

import pytest
import torch

from lil_sparse.options import SamplingOptions
from lil_sparse.sampling import Sampler, SamplingParams, filter_top_k_top_p
from lil_sparse.sampling.nucleus import TORCH_RULES, filter_by_thresholds, threshold_filter_available
from lil_sparse.testing.nucleus_logits import (
    filters_each_row_alone_as_in_its_batch,
    nucleus_margin,
    tie_free_logits,
)

NEG_INF = float("-inf")
# Rows mixing no filter, top-p only, top-k only and both, at several temperatures.
TEMPERATURES = [1.0, 0.6, 1.0, 0.6, 1.0, 0.7, 1.3, 1.0]
TOP_K = [0, 0, 0, 40, 20, 0, 5, 3]
TOP_P = [1.0, 0.95, 0.9, 0.95, 1.0, 0.9, 0.9, 1.0]


def mixed_rows(vocab_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scaled = tie_free_logits(len(TOP_K), vocab_size, seed) / torch.tensor(TEMPERATURES).unsqueeze(1)
    return scaled, torch.tensor(TOP_K), torch.tensor(TOP_P)


@pytest.mark.parametrize("vocab_size", [97, 4096, 151_936])
@pytest.mark.parametrize("seed", [0, 1])
def test_thresholds_equal_the_sort_without_ties(vocab_size: int, seed: int) -> None:
    scaled, top_k, top_p = mixed_rows(vocab_size, seed)
    assert bool((nucleus_margin(scaled, top_k, top_p) > 1e-4).all()), "a near-tie: pick other logits"
    reference = filter_top_k_top_p(scaled, top_k, top_p)
    filtered = filter_by_thresholds(scaled, top_k, top_p, TORCH_RULES)
    assert torch.equal(filtered, reference)
    kept = (filtered > NEG_INF).sum(dim=-1).tolist()
    assert (kept[0], kept[4], kept[7]) == (vocab_size, min(20, vocab_size), 3)  # no top-p on these
    assert 1 <= kept[6] <= 5 and 1 <= kept[3] <= 40 and all(count >= 1 for count in kept)
    assert torch.equal(filtered[0], scaled[0])


def test_ties_at_a_boundary_are_kept_whole() -> None:
    """FlashInfer keeps every value tied with the k-th and every probability tied across the
    nucleus boundary; the sort keeps the tied tokens it orders first. Probabilities 0.5, 0.3,
    0.1, 0.1 at top-p 0.85: the mass above each 0.1 is 0.8 < 0.85, so both stay; the sort keeps
    the first one (mass before the second 0.9)."""
    logits = torch.tensor([[5.0, 3.0, 4.0, 3.0, 3.0, 1.0]])
    top_k, no_top_p = torch.tensor([3]), torch.tensor([1.0])
    assert filter_by_thresholds(logits, top_k, no_top_p, TORCH_RULES).tolist() == [
        [5.0, 3.0, 4.0, 3.0, 3.0, NEG_INF]
    ]
    assert (filter_top_k_top_p(logits, top_k, no_top_p) > NEG_INF).sum().item() == 3
    probs = torch.tensor([[0.1, 0.5, 0.1, 0.3]])
    logits = probs.log()
    top_p = torch.tensor([0.85])
    assert (filter_by_thresholds(logits, torch.tensor([0]), top_p, TORCH_RULES) > NEG_INF).tolist() == [
        [True, True, True, True]
    ]
    reference = (filter_top_k_top_p(logits, torch.tensor([0]), top_p) > NEG_INF)[0].tolist()
    assert reference[1] and reference[3] and reference[0] != reference[2]  # one of the two 0.1


def test_top_p_rule_keeps_while_the_larger_mass_falls_short() -> None:
    probs = torch.tensor([[0.25, 0.5, 0.125, 0.125], [0.25, 0.5, 0.125, 0.125], [0.0, 1.0, 0.0, 0.0]])
    renormed = TORCH_RULES.renorm_top_p(probs, torch.tensor([0.5, 0.7, 1.0]))
    # Row 0: only 0.5 has less than 0.5 above it. Row 1: 0.25 has 0.5 above it (< 0.7), each
    # 0.125 has 0.75. Row 2 (top-p 1): every positive probability.
    assert renormed[0].tolist() == [0.0, 1.0, 0.0, 0.0] and renormed[2].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert renormed[1].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0, 0.0])


def test_rows_without_filters_come_back_unchanged() -> None:
    """top_k 0 (FlashInfer's kernel would mask the whole row for k = 0, so it gets V) and a top_k
    beyond the vocabulary keep every logit, -inf and the exact values included."""
    scaled = tie_free_logits(3, 50, seed=3)
    scaled[1, 7] = NEG_INF
    top_k, top_p = torch.tensor([0, 0, 1000]), torch.tensor([1.0, 1.0, 1.0])
    filtered = filter_by_thresholds(scaled.clone(), top_k, top_p, TORCH_RULES)
    assert torch.equal(filtered, scaled)


def test_each_row_uses_only_its_own_settings() -> None:
    scaled, top_k, top_p = mixed_rows(512, seed=5)
    assert filters_each_row_alone_as_in_its_batch(scaled, top_k, top_p, TORCH_RULES)


def test_cpu_sampler_keeps_the_sort() -> None:
    """Off CUDA the sampler filters with filter_top_k_top_p: the same tokens with the threshold
    filter asked for or not."""
    assert not threshold_filter_available(torch.zeros(1, 4))
    logits = tie_free_logits(4, 300, seed=7)
    options = [SamplingOptions(temperature=0.6, top_p=0.95, seed=11 + row) for row in range(4)]
    params = SamplingParams.from_options(options)
    positions = torch.arange(4) + 100
    tokens = Sampler().sample(logits, params, positions)[0]
    assert torch.equal(tokens, Sampler(threshold_filter=False).sample(logits, params, positions)[0])
    assert torch.equal(
        Sampler().filter(logits, params), filter_top_k_top_p(logits, params.top_k, params.top_p)
    )
