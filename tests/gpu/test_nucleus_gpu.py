"""FlashInfer's threshold top-k / top-p filter (lil_sparse.sampling.nucleus) on CUDA against the
sort of filter_top_k_top_p, the reference.

Exact where no value ties across a boundary and no nucleus sum lies within float32 rounding of
top_p (tie_free_logits, nucleus_margin > 1e-4); on plain random logits the kept sets may differ
only at tokens whose float64 mass before them lies within 1e-4 of top_p.
"""

from __future__ import annotations

import pytest
import torch

from lil_sparse.options import SamplingOptions
from lil_sparse.sampling import Sampler, SamplingParams, filter_top_k_top_p
from lil_sparse.sampling.nucleus import TORCH_RULES, filter_by_thresholds, flashinfer_kernels
from lil_sparse.testing.nucleus_logits import (
    filters_each_row_alone_as_in_its_batch,
    nucleus_margin,
    tie_free_logits,
)

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")

NEG_INF = float("-inf")
VOCABS = [97, 151_936]
# Rows mixing no filter, top-p only (0.9, 0.95), top-k only and both, at several temperatures.
TEMPERATURES = [1.0, 0.6, 1.0, 0.6, 1.0, 0.7, 1.3, 1.0, 0.6]
TOP_K = [0, 0, 0, 40, 20, 0, 5, 3, 0]
TOP_P = [1.0, 0.95, 0.9, 0.95, 1.0, 0.9, 0.9, 1.0, 0.95]


@pytest.fixture(autouse=True)
def _cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


def mixed_rows(vocab_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPU ``(scaled [9, V] float32, top_k [9] int64, top_p [9] float32)`` without near-ties."""
    scaled = tie_free_logits(len(TOP_K), vocab_size, seed) / torch.tensor(TEMPERATURES).unsqueeze(1)
    top_k, top_p = torch.tensor(TOP_K), torch.tensor(TOP_P)
    assert bool((nucleus_margin(scaled, top_k, top_p) > 1e-4).all()), "a near-tie: pick other logits"
    return scaled, top_k, top_p


@pytest.mark.parametrize("vocab_size", VOCABS)
def test_top_k_kernel_keeps_every_value_tied_with_the_kth(vocab_size: int) -> None:
    """bfloat16-rounded logits (ties everywhere) through FlashInfer's top_k_mask_logits and the
    PyTorch statement of its rule: identical, ties and k = V (a copy) included."""
    generator = torch.Generator().manual_seed(vocab_size)
    logits = (torch.randn(6, vocab_size, generator=generator) * 3).bfloat16().float().cuda()
    k = torch.tensor([1, 2, 40, 90, vocab_size, vocab_size - 1], dtype=torch.int32, device="cuda")
    masked = flashinfer_kernels().mask_top_k(logits, k)
    assert torch.equal(masked, TORCH_RULES.mask_top_k(logits, k))
    kept = (masked > NEG_INF).sum(dim=-1)
    assert bool((kept >= k.long()).all()) and kept[4].item() == vocab_size


@pytest.mark.parametrize("vocab_size", VOCABS)
def test_top_p_kernel_keeps_the_nucleus(vocab_size: int) -> None:
    """FlashInfer's top_p_renorm_probs against the PyTorch statement of its rule, on the softmax
    of each row's top-k candidates (as filter_by_thresholds calls it): the same kept sets."""
    scaled, top_k, top_p = (t.cuda() for t in mixed_rows(vocab_size, seed=0))
    k = torch.where(top_k > 0, top_k, vocab_size).to(torch.int32)
    probs = TORCH_RULES.mask_top_k(scaled, k).softmax(dim=-1)
    kept = flashinfer_kernels().renorm_top_p(probs, top_p) > 0
    assert torch.equal(kept, TORCH_RULES.renorm_top_p(probs, top_p) > 0)
    assert kept.sum(dim=-1)[0].item() == vocab_size  # top-p 1, no top-k: every token


@pytest.mark.parametrize("vocab_size", VOCABS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_filter_equals_the_sort(vocab_size: int, seed: int) -> None:
    scaled, top_k, top_p = mixed_rows(vocab_size, seed)
    reference = filter_top_k_top_p(scaled, top_k, top_p)  # CPU
    filtered = filter_by_thresholds(scaled.cuda(), top_k.cuda(), top_p.cuda(), flashinfer_kernels())
    assert torch.equal(filtered.cpu(), reference)
    assert torch.equal(filtered, filter_top_k_top_p(scaled.cuda(), top_k.cuda(), top_p.cuda()))
    kept = (filtered > NEG_INF).sum(dim=-1).tolist()
    assert (kept[0], kept[4], kept[7]) == (vocab_size, min(20, vocab_size), 3)


def test_ties_of_bfloat16_logits_are_kept_whole() -> None:
    """bfloat16-rounded logits (the engine's lm_head) tie at many boundaries: the threshold
    filter keeps everything the sort keeps, and each extra token ties the lowest logit the sort
    kept in its row (the rest of a run of equal values cut by the sort)."""
    rows = 8
    scaled = tie_free_logits(rows, 151_936, seed=10).bfloat16().float()
    top_k = torch.tensor([20, 40, 20, 40, 0, 0, 0, 0])
    top_p = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.9, 0.95, 0.9, 0.95])
    assert bool((nucleus_margin(scaled, top_k, top_p) > 1e-4).all()), "a near-tie: pick other logits"
    reference = filter_top_k_top_p(scaled, top_k, top_p).cuda() > NEG_INF
    kept = filter_by_thresholds(scaled.cuda(), top_k.cuda(), top_p.cuda(), flashinfer_kernels()) > NEG_INF
    scaled = scaled.cuda()
    assert not bool((reference & ~kept).any())
    lowest_kept = scaled.masked_fill(~reference, float("inf")).min(dim=-1, keepdim=True).values
    extra = kept & ~reference
    assert bool((scaled[extra] == lowest_kept.expand_as(scaled)[extra]).all())
    assert int(extra.sum()) > 0  # some boundary here did fall inside a run of ties


def test_random_logits_differ_only_within_rounding_of_top_p() -> None:
    """Plain N(0, 3^2) logits over 151,936 tokens, at temperature 1 (a nucleus of thousands of
    tokens of ~1e-5 each) and 0.6 (tens to hundreds). A token may change sides only where its
    float64 mass before lies within 1e-4 of top_p (the two float32 sums round differently)."""
    rows = 8
    logits = torch.randn(rows, 151_936, generator=torch.Generator().manual_seed(9)) * 3
    temperature = torch.tensor([1.0, 1.0, 0.6, 0.6] * (rows // 4)).unsqueeze(1)
    scaled = (logits / temperature).cuda()
    top_k = torch.zeros(rows, dtype=torch.int64, device="cuda")
    top_p = torch.tensor([0.9, 0.95] * (rows // 2), device="cuda")
    filtered = filter_by_thresholds(scaled, top_k, top_p, flashinfer_kernels())
    reference = filter_top_k_top_p(scaled, top_k, top_p)
    ordered, order = scaled.double().sort(dim=-1, descending=True)
    weights = (ordered - ordered[:, :1]).exp()
    mass_before = (weights.cumsum(dim=-1) - weights) / weights.sum(dim=-1, keepdim=True)
    near = torch.zeros_like(scaled, dtype=torch.bool).scatter_(
        1, order, (mass_before - top_p.double().unsqueeze(1)).abs() < 1e-4
    )
    changed = (filtered > NEG_INF) != (reference > NEG_INF)
    assert not bool((changed & ~near).any())
    both = (filtered > NEG_INF) & (reference > NEG_INF)
    assert torch.equal(filtered[both], reference[both])  # what both keep keeps its exact value
    kept = (reference > NEG_INF).sum(dim=-1).tolist()
    assert min(kept[0], kept[1], kept[4], kept[5]) > 1000  # temperature 1: a wide nucleus


def test_each_row_uses_only_its_own_settings() -> None:
    scaled, top_k, top_p = (t.cuda() for t in mixed_rows(151_936, seed=4))
    assert filters_each_row_alone_as_in_its_batch(scaled, top_k, top_p, flashinfer_kernels())


def test_no_host_sync_and_a_cuda_graph_replays_it() -> None:
    scaled, top_k, top_p = (t.cuda() for t in mixed_rows(151_936, seed=5))
    kernels = flashinfer_kernels()
    filter_by_thresholds(scaled, top_k, top_p, kernels)  # FlashInfer's JIT build and buffers
    torch.cuda.set_sync_debug_mode("error")
    try:
        eager = filter_by_thresholds(scaled, top_k, top_p, kernels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    static = scaled.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = filter_by_thresholds(static, top_k, top_p, kernels)
    other, _, _ = mixed_rows(151_936, seed=6)
    static.copy_(other)
    graph.replay()
    assert torch.equal(captured, filter_by_thresholds(other.cuda(), top_k, top_p, kernels))
    static.copy_(scaled)
    graph.replay()
    assert torch.equal(captured, eager)


@pytest.mark.parametrize("vocab_size", VOCABS)
def test_sampler_draws_the_reference_tokens(vocab_size: int) -> None:
    """Sampler() (the threshold filter on CUDA) against Sampler(threshold_filter=False) (the
    sort), over 16 positions of 9 mixed rows: the same tokens and log-probabilities."""
    logits = tie_free_logits(len(TOP_K), vocab_size, seed=8).cuda()
    options = [
        SamplingOptions(temperature=t, top_k=k, top_p=p, seed=1000 + row)
        for row, (t, k, p) in enumerate(zip(TEMPERATURES, TOP_K, TOP_P, strict=True))
    ]
    params = SamplingParams.from_options(options, device="cuda")
    scaled = logits.cpu() / torch.tensor(TEMPERATURES).unsqueeze(1)
    assert bool((nucleus_margin(scaled, torch.tensor(TOP_K), torch.tensor(TOP_P)) > 1e-4).all())
    fast, reference = Sampler(), Sampler(threshold_filter=False)
    drawn = []
    for position in range(16):
        positions = torch.full((len(options),), 500 + position, device="cuda")
        tokens, logprobs = fast.sample(logits, params, positions)
        expected_tokens, expected_logprobs = reference.sample(logits, params, positions)
        assert torch.equal(tokens, expected_tokens)
        assert torch.equal(logprobs, expected_logprobs)
        drawn.append(tokens.cpu())
    assert len({tuple(t.tolist()) for t in drawn}) > 1  # the noise moves with the position
