"""Sampler: greedy, filters, seeded Gumbel-max draws, batch invariance."""

from __future__ import annotations

import math
import random

import pytest
import torch

from lil_sparse.options import SamplingOptions
from lil_sparse.sampling import Sampler, SamplingParams, filter_top_k_top_p, uniform_noise, with_request_seed

VOCAB = 97


def sample(
    logits: torch.Tensor, options: list[SamplingOptions], positions: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    params = SamplingParams.from_options(options)
    return Sampler().sample(logits, params, torch.tensor(positions, dtype=torch.int64))


def random_logits(rows: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * scale


def test_params_tensors_and_dtypes() -> None:
    params = SamplingParams.from_options(
        [SamplingOptions(), SamplingOptions(temperature=0.7, top_k=5, top_p=0.9, seed=2**63 - 1)]
    )
    assert params.temperature.dtype == torch.float32 and params.top_p.dtype == torch.float32
    assert params.top_k.dtype == torch.int64 and params.seed.dtype == torch.int64
    assert params.temperature.tolist() == [1.0, pytest.approx(0.7)]
    assert params.top_k.tolist() == [0, 5]
    assert params.top_p.tolist() == [1.0, pytest.approx(0.9)]
    assert params.seed.tolist() == [0, 2**63 - 1]
    assert params.greedy.tolist() == [True, False]
    assert params.filtering and params.max_top_k == 5
    mixed = SamplingParams.from_options(
        [SamplingOptions(temperature=1, top_k=3, seed=1), SamplingOptions(1.0, 0, 0.5, 2)]
    )
    assert mixed.filtering and mixed.max_top_k == 0  # the top-p-only row needs the full sort
    assert not SamplingParams.from_options([SamplingOptions(temperature=1, seed=1)]).filtering


def test_sampled_rows_need_a_seed() -> None:
    with pytest.raises(ValueError, match="seed"):
        SamplingParams.from_options([SamplingOptions(temperature=1.0)])
    seeded = with_request_seed(SamplingOptions(temperature=1.0), random.Random(0))
    assert seeded.seed == random.Random(0).getrandbits(63)
    assert with_request_seed(seeded).seed == seeded.seed


def test_greedy_is_argmax_and_logprobs_are_raw_log_softmax() -> None:
    logits = random_logits(6)
    tokens, logprobs = sample(logits, [SamplingOptions()] * 6, list(range(6)))
    assert torch.equal(tokens, logits.argmax(dim=-1))
    expected = logits.log_softmax(dim=-1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs, expected)


def test_top_k_one_equals_greedy() -> None:
    logits = random_logits(8, seed=1)
    options = [SamplingOptions(temperature=2.0, top_k=1, seed=s) for s in range(8)]
    tokens, _ = sample(logits, options, [100 + i for i in range(8)])
    assert torch.equal(tokens, logits.argmax(dim=-1))


def test_same_seed_same_tokens_different_seeds_differ() -> None:
    logits = torch.zeros(1, VOCAB)  # uniform: the token is decided by the noise alone
    positions = list(range(50))
    runs = {
        seed: [
            sample(logits, [SamplingOptions(temperature=1.0, seed=seed)], [p])[0].item() for p in positions
        ]
        for seed in (7, 7 + 2**40, 8)
    }
    again = [sample(logits, [SamplingOptions(temperature=1.0, seed=7)], [p])[0].item() for p in positions]
    assert runs[7] == again
    assert runs[7] != runs[8] and runs[7] != runs[7 + 2**40]  # high seed bits matter too
    assert len(set(runs[7])) > 25  # positions draw fresh noise


def test_a_rows_token_does_not_depend_on_its_batch() -> None:
    logits = random_logits(12, seed=2, scale=1.0)
    options = [
        SamplingOptions(
            temperature=0.5 + 0.1 * i, top_k=[0, 10, 40][i % 3], top_p=[1.0, 0.9, 0.6][i % 2 + 1], seed=i
        )
        for i in range(12)
    ]
    positions = [30 + 5 * i for i in range(12)]
    alone = [sample(logits[i : i + 1], [options[i]], [positions[i]])[0].item() for i in range(12)]
    batched = sample(logits, options, positions)[0].tolist()
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = sample(logits[order], [options[i] for i in order], [positions[i] for i in order])[0].tolist()
    mixed_with_greedy = sample(
        torch.cat([random_logits(3, seed=9), logits]),
        [SamplingOptions()] * 3 + options,
        [0, 1, 2, *positions],
    )[0].tolist()[3:]
    assert batched == alone
    assert shuffled == [alone[i] for i in order]
    assert mixed_with_greedy == alone


def reference_nucleus(probs: list[float], top_p: float) -> set[int]:
    """Brute force: the smallest set of most likely tokens whose mass reaches top_p."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    for size in range(1, len(probs) + 1):
        if sum(probs[i] for i in order[:size]) >= top_p:
            return set(order[:size])
    return set(order)


def test_top_p_keeps_exactly_the_smallest_set_reaching_p() -> None:
    rng = random.Random(0)
    for trial in range(60):
        logits = random_logits(1, seed=trial, scale=rng.choice([0.5, 2.0, 5.0]))
        probs = logits.double().softmax(dim=-1)[0].tolist()
        cumulative = sorted(probs, reverse=True)
        for i in range(1, VOCAB):
            cumulative[i] += cumulative[i - 1]
        # p halfway between two cumulative masses at least 1e-4 apart, so float32 rounding
        # (about 1e-7 here) cannot move the boundary
        ranked = sorted(probs, reverse=True)
        cut = rng.choice([i for i in range(VOCAB) if ranked[i] > 1e-4])
        top_p = (cumulative[cut] + (cumulative[cut - 1] if cut else 0.0)) / 2
        if top_p <= 0.0:
            continue
        kept = filter_top_k_top_p(logits, torch.tensor([0]), torch.tensor([top_p], dtype=torch.float32))
        kept_set = set(torch.isfinite(kept[0]).nonzero().flatten().tolist())
        assert kept_set == reference_nucleus(probs, top_p), trial
        assert len(kept_set) == cut + 1
        torch.testing.assert_close(kept[0][list(kept_set)], logits[0][list(kept_set)])


def test_top_k_then_top_p_renormalises_and_narrow_path_matches_the_sort() -> None:
    logits = random_logits(5, seed=4)
    top_k = torch.tensor([3, 10, 1, 20, 7])
    top_p = torch.tensor([0.5, 0.8, 1.0, 0.3, 0.99])
    wide = filter_top_k_top_p(logits, top_k, top_p)
    narrow = filter_top_k_top_p(logits, top_k, top_p, max_top_k=20)
    assert torch.equal(wide, narrow)
    for row in range(5):
        top = logits[row].topk(int(top_k[row])).indices.tolist()
        renormalised = logits[row][top].double().softmax(dim=-1).tolist()
        expected = {top[i] for i in reference_nucleus(renormalised, float(top_p[row]))}
        assert set(torch.isfinite(wide[row]).nonzero().flatten().tolist()) == expected


def test_sample_frequencies_match_softmax_over_temperature() -> None:
    """Chi-square over 20,000 positions of one fixed seed, 10 categories (df = 9). The 0.1 %
    critical value of chi-square(9) is 27.9; the draws are deterministic, so this never flakes."""
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0]])
    temperature = 1.7
    draws = 20_000
    params = SamplingParams.from_options([SamplingOptions(temperature=temperature, seed=12345)] * draws)
    tokens, _ = Sampler().sample(logits.expand(draws, -1), params, torch.arange(draws))
    observed = torch.bincount(tokens, minlength=10).double()
    expected = (logits[0].double() / temperature).softmax(dim=-1) * draws
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    assert chi_square < 27.9


def test_uniform_noise_is_uniform_and_inside_the_open_interval() -> None:
    noise = uniform_noise(torch.tensor([0, 1, 2**62]), torch.tensor([0, 0, 5]), 50_000)
    assert bool((noise > 0).all() and (noise < 1).all())
    histogram = torch.histc(noise, bins=20, min=0.0, max=1.0)
    expected = noise.numel() / 20
    assert float(((histogram - expected) ** 2 / expected).sum()) < 50.0  # chi-square(19) 0.1 %: 43.8 x margin
    assert abs(torch.corrcoef(noise)[0, 1].item()) < 0.02


def test_negative_infinity_logits_never_give_nan_or_a_masked_token() -> None:
    logits = random_logits(4, seed=5)
    logits[:, ::2] = float("-inf")
    options = [
        SamplingOptions(),
        SamplingOptions(temperature=1.0, seed=1),
        SamplingOptions(temperature=0.3, top_k=5, seed=2),
        SamplingOptions(temperature=1e-9, top_p=0.5, seed=3),
    ]
    for position in range(20):
        tokens, logprobs = sample(logits, options, [position] * 4)
        assert bool(torch.isfinite(logprobs).all())
        assert all(token % 2 == 1 for token in tokens.tolist())
    tokens, _ = sample(logits, options, [0] * 4)
    assert tokens[3].item() == logits[3].argmax().item()  # a tiny temperature is greedy


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    logits = random_logits(16, seed=6)
    options = [SamplingOptions(temperature=0.8, top_k=[0, 20][i % 2], top_p=0.9, seed=i) for i in range(16)]
    positions = list(range(16))
    cpu_tokens, cpu_logprobs = sample(logits, options, positions)
    params = SamplingParams.from_options(options, device="cuda")
    gpu_tokens, gpu_logprobs = Sampler().sample(logits.cuda(), params, torch.tensor(positions, device="cuda"))
    assert gpu_tokens.cpu().tolist() == cpu_tokens.tolist()
    torch.testing.assert_close(gpu_logprobs.cpu(), cpu_logprobs)
    assert math.isfinite(float(gpu_logprobs.sum()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_noise_gives_the_same_tokens() -> None:
    eager, compiled = Sampler(), Sampler(compile_noise=True)
    for rows, vocab in ((3, 1000), (17, 50_000)):
        logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(rows)).cuda()
        options = [SamplingOptions(temperature=1.0, top_p=0.95, seed=10 * i) for i in range(rows)]
        params = SamplingParams.from_options(options, device="cuda")
        positions = torch.arange(rows, device="cuda") * 7
        assert torch.equal(
            eager.sample(logits, params, positions)[0], compiled.sample(logits, params, positions)[0]
        )


ROW_KINDS = [
    SamplingOptions(temperature=0.8, seed=42),  # no filter
    SamplingOptions(temperature=1.0, top_k=5, seed=1),
    SamplingOptions(temperature=1.0, top_k=1, seed=2),
    SamplingOptions(temperature=1.0, top_k=VOCAB + 50, seed=3),  # wider than the vocabulary
    SamplingOptions(temperature=0.9, top_p=0.7, seed=4),
    SamplingOptions(temperature=1.2, top_k=12, top_p=0.5, seed=5),
    SamplingOptions(temperature=1.0, top_k=40, top_p=0.95, seed=6),
    SamplingOptions(),  # greedy
]


def reference_kept(logits_row: torch.Tensor, option: SamplingOptions) -> set[int]:
    """Plain per-row rule: top-k of the row, renormalise, then the nucleus (never batched)."""
    order = sorted(range(VOCAB), key=lambda i: -float(logits_row[i]))
    top = order[: option.top_k] if option.top_k > 0 else order
    probs = logits_row[top].double().softmax(dim=-1).tolist()
    return {top[i] for i in reference_nucleus(probs, option.top_p)}


@pytest.mark.parametrize("mates", [(0, 1), (0, 4), (1, 5, 6), (2, 3), (0, 1, 2, 3, 4, 5, 6, 7), (4, 6, 0)])
def test_each_row_filters_with_its_own_top_k_and_top_p(mates: tuple[int, ...]) -> None:
    options = [ROW_KINDS[i] for i in mates]
    logits = random_logits(len(options), seed=sum(mates))
    scaled = logits / torch.tensor([max(o.temperature, 1e-5) for o in options]).unsqueeze(1)
    params = SamplingParams.from_options(options)
    filtered = filter_top_k_top_p(scaled.clone(), params.top_k, params.top_p, params.max_top_k)
    for row, option in enumerate(options):
        kept = set(torch.isfinite(filtered[row]).nonzero().flatten().tolist())
        if option.top_k == 0 and option.top_p == 1.0:
            assert torch.equal(filtered[row], scaled[row])  # untouched, whatever the mates ask
        else:
            assert kept == reference_kept(scaled[row], option), (mates, row)


@pytest.mark.parametrize("mate", range(len(ROW_KINDS)))
def test_a_seeded_row_samples_the_same_tokens_beside_any_mate(mate: int) -> None:
    """The issue's case: temperature 0.8, seed 42 changed when batched with a top_k=5 request."""
    target = ROW_KINDS[0]
    for position in range(40):
        logits = random_logits(2, seed=position, scale=1.5)
        alone = sample(logits[:1], [target], [position])[0].item()
        together = sample(logits, [target, ROW_KINDS[mate]], [position, position + 3])[0].tolist()
        assert together[0] == alone, position
    # And every kind keeps its own tokens next to a top-k 5 row, in either order.
    for kind in ROW_KINDS:
        for position in range(10):
            logits = random_logits(2, seed=100 + position)
            alone = sample(logits[1:], [kind], [position])[0].item()
            assert sample(logits, [ROW_KINDS[1], kind], [7, position])[0][1].item() == alone


class RecordingSampler(Sampler):
    """A real :class:`Sampler` that records the rows it filters and samples."""

    def __init__(self) -> None:
        super().__init__()
        self.filtered: list[tuple[list[int], list[float]]] = []
        self.sampled: list[list[bool]] = []

    def filter(self, scaled: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        self.filtered.append((params.top_k.tolist(), params.top_p.tolist()))
        return super().filter(scaled, params)

    def sample(self, logits, params, positions):
        self.sampled.append(params.greedy.tolist())
        return super().sample(logits, params, positions)


def test_warm_up_runs_the_greedy_and_the_filtering_paths() -> None:
    """The engine's warm-up (on CUDA, before serving) must reach every kernel a request may run:
    one batch with a greedy row and a row filtering by both top-k and top-p, over the whole
    vocabulary."""
    sampler = RecordingSampler()
    sampler.warm_up(VOCAB, torch.device("cpu"))
    assert sampler.sampled == [[True, False]]
    [(top_k, top_p)] = sampler.filtered
    assert top_k[1] > 0 and top_p[1] < 1.0
