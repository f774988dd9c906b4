"""Each row's argmax and log-sum-exp (:mod:`lil_sparse.kernels.row_argmax`) against
``torch.argmax`` and ``log_softmax``, and the sampler's use of it.

The argmax and the maximum must be exact (ties to the first index, NaN first, rows of -inf);
``log_sum`` adds the same float32 terms in another order, so it must agree within a few ulps.
Runs on CPU through Triton's interpreter (tests/conftest.py) and on CUDA.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels.row_argmax import (
    BLOCK,
    argmax_logsumexp,
    argmax_logsumexp_reference,
    greedy_record,
    greedy_record_reference,
)
from lil_sparse.options import SamplingOptions
from lil_sparse.sampling import SamplingParams
from lil_sparse.sampling.sampler import Sampler, _Argmax

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def logits_of(rows: int, vocab: int, seed: int, scale: float = 4.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=gen) * scale).to(DEVICE)


def assert_matches_reference(logits: torch.Tensor) -> None:
    token, row_max, log_sum = argmax_logsumexp(logits)
    want_token, want_max, want_log_sum = argmax_logsumexp_reference(logits)
    assert token.dtype == torch.int64 and row_max.dtype == log_sum.dtype == torch.float32
    assert token.tolist() == want_token.tolist()
    assert torch.equal(row_max.isnan(), want_max.isnan())
    assert torch.equal(row_max.nan_to_num(), want_max.nan_to_num())
    assert torch.equal(log_sum.isnan(), want_log_sum.isnan())
    torch.testing.assert_close(log_sum.nan_to_num(), want_log_sum.nan_to_num(), rtol=4e-6, atol=1e-6)


@pytest.mark.parametrize(
    "rows, vocab", [(1, 1), (1, 7), (3, BLOCK), (2, BLOCK + 1), (4, 3 * BLOCK - 5), (2, 49152), (1, 151936)]
)
def test_random_rows_match_torch(rows, vocab):
    assert_matches_reference(logits_of(rows, vocab, seed=rows * 1000 + vocab))


def test_ties_take_the_first_index_across_and_within_chunks():
    logits = logits_of(3, 3 * BLOCK, seed=1)
    logits[0, [5, BLOCK + 3, 2 * BLOCK + 1]] = 50.0  # one per chunk: the first chunk's wins
    logits[1, [BLOCK + 9, BLOCK + 2]] = 50.0  # two in one chunk: the lower index
    logits[2] = 0.25  # every entry equal: index 0, log_sum = log(V)
    token, _, log_sum = argmax_logsumexp(logits)
    assert token.tolist() == [5, BLOCK + 2, 0]
    assert log_sum[2].item() == pytest.approx(math.log(3 * BLOCK), rel=1e-6)
    assert_matches_reference(logits)


def test_nan_and_infinite_rows_follow_torch():
    logits = logits_of(5, 2 * BLOCK + 10, seed=2)
    logits[0, [BLOCK + 7, 2 * BLOCK + 1]] = float("nan")  # the first NaN is the argmax
    logits[1] = float("-inf")  # all -inf: index 0, max -inf, log_sum NaN
    logits[2, 3] = float("inf")  # +inf: its index, log_sum NaN
    logits[3, : BLOCK + 4] = float("-inf")  # whole -inf chunks add nothing
    logits[4, BLOCK:] = float("-inf")
    token, row_max, log_sum = argmax_logsumexp(logits)
    assert token.tolist()[:3] == [BLOCK + 7, 0, 3]
    assert row_max[0].isnan() and row_max[1].item() == float("-inf") and row_max[2].item() == float("inf")
    assert log_sum[:3].isnan().all() and not log_sum[3:].isnan().any()
    assert_matches_reference(logits)


def test_a_rows_results_do_not_depend_on_its_batch():
    """Batch invariance, which the sampler promises (a row's token and log-probability are the
    same alone as beside any mates, :class:`~lil_sparse.engine.step_sampler.StepSampler` relies on
    it): each row's outputs equal, bit for bit, those of the row launched alone."""
    logits = logits_of(4, 2 * BLOCK + 33, seed=6)
    logits[1, BLOCK + 2] = float("nan")
    logits[2] = float("-inf")
    batch = argmax_logsumexp(logits)
    for row in range(4):
        alone = argmax_logsumexp(logits[row : row + 1])
        for got, want in zip(alone, batch, strict=True):
            assert torch.equal(got.nan_to_num(), want[row : row + 1].nan_to_num())
            assert torch.equal(got.isnan(), want[row : row + 1].isnan())


def test_row_strides_are_read_as_given():
    wide = logits_of(3, 2 * BLOCK, seed=3)
    view = wide[:, 100 : 100 + BLOCK]  # rows 2 * BLOCK apart
    assert_matches_reference(view)


def test_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="float32"):
        argmax_logsumexp(torch.zeros(2, 8, dtype=torch.bfloat16, device=DEVICE))
    with pytest.raises(ValueError, match="contiguous columns"):
        argmax_logsumexp(torch.zeros(8, 2, device=DEVICE).t())
    with pytest.raises(ValueError, match="V >= 1"):
        argmax_logsumexp(torch.zeros(2, 0, device=DEVICE))
    token, _, _ = argmax_logsumexp(torch.zeros(0, 8, device=DEVICE))
    assert token.shape == (0,)


def test_log_probs_from_the_row_statistics_equal_log_softmax():
    """The sampler's CUDA arithmetic, ``(x[t] - max) - log_sum`` and ``-log_sum`` at the argmax,
    against ``log_softmax(...).gather`` (its CPU path), on rows whose statistics come from the
    kernel (any device: the interpreter on CPU)."""
    logits = logits_of(4, 3 * BLOCK + 17, seed=4)
    logits[3] = float("-inf")
    statistics = _Argmax(logits, *argmax_logsumexp(logits))
    reference = _Argmax(logits, logits.argmax(dim=-1))
    picks = torch.tensor([0, 17, 3 * BLOCK + 16, 5], device=DEVICE)
    for got, want in ((statistics.log_probs(picks), reference.log_probs(picks)),
                      (statistics.own_log_probs(), reference.own_log_probs())):  # fmt: skip
        assert torch.equal(got.isnan(), want.isnan())
        assert got[3].isnan()  # log_softmax of a row of -inf
        torch.testing.assert_close(got[:3], want[:3], rtol=4e-6, atol=4e-6)
    assert torch.equal(statistics.tokens, reference.tokens)


def test_sampler_greedy_is_the_argmax_with_its_log_probability():
    """On CUDA through the kernels, on CPU through torch; either way what :meth:`Sampler.sample`
    returns for an all-greedy batch, bit for bit, as its docstring says."""
    logits = logits_of(3, 5000, seed=5)
    tokens, logprobs = Sampler.greedy(logits)
    assert tokens.tolist() == logits.argmax(dim=-1).tolist()
    want = logits.log_softmax(dim=-1).gather(-1, tokens.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(logprobs, want, rtol=4e-6, atol=4e-6)
    params = SamplingParams.from_options([SamplingOptions()] * 3, device=DEVICE, positions=[0] * 3)
    sampled_tokens, sampled_logprobs = Sampler().sample(logits, params, params.positions)
    assert torch.equal(sampled_tokens, tokens) and torch.equal(sampled_logprobs, logprobs)


def test_greedy_record_holds_the_argmax_and_its_log_probability():
    """The host record the argmax's second kernel writes (RECORD): row 0 the tokens as float64,
    row 1 ``-log_sum``, against the reference's stack; NaN and all -inf rows as
    :func:`argmax_logsumexp` has them; the device tokens too."""
    logits = logits_of(5, 2 * BLOCK + 9, seed=6)
    logits[1, 7] = float("nan")
    logits[2] = float("-inf")
    logits[3, 100] = logits[3].max()  # a tie: the first index
    token, record = greedy_record(logits)
    want_token, want_record = greedy_record_reference(logits)
    assert token.dtype == torch.int64 and record.dtype == torch.float64 and record.shape == (2, 5)
    assert token.tolist() == want_token.tolist()
    assert record[0].tolist() == [float(t) for t in want_token.tolist()]
    assert torch.equal(record[1].isnan(), want_record[1].isnan())
    torch.testing.assert_close(record[1].nan_to_num(), want_record[1].nan_to_num(), rtol=4e-6, atol=1e-6)
    assert greedy_record(torch.zeros(0, 8, device=DEVICE))[1].shape == (2, 0)


def test_greedy_record_writes_into_a_given_record():
    """``out`` takes the record (on CUDA it may be pinned host memory: tests/gpu checks that
    zero-copy path); its shape and dtype are checked."""
    logits = logits_of(4, BLOCK + 3, seed=8)
    out = torch.full((2, 4), float("nan"), dtype=torch.float64, device=DEVICE)
    token, record = greedy_record(logits, out=out)
    want_token, want_record = greedy_record(logits)
    assert record is out and torch.equal(token, want_token) and torch.equal(out, want_record)
    for wrong in (
        torch.empty((2, 3), dtype=torch.float64, device=DEVICE),
        torch.empty((2, 4), dtype=torch.float32, device=DEVICE),
        torch.empty((4, 2), dtype=torch.float64, device=DEVICE).t(),
    ):
        with pytest.raises(ValueError, match="out must be"):
            greedy_record(logits, out=wrong)


def test_sample_record_is_sample_with_its_results_stacked():
    """:meth:`Sampler.sample_record` (the engine's entry) gives :meth:`Sampler.sample`'s tokens
    and logprobs as one float64 record, for an all-greedy batch (on CUDA through the argmax's
    record) and for a sampled one."""
    logits = logits_of(3, 5000, seed=7)
    sampler = Sampler()
    for options in ([SamplingOptions()] * 3, [SamplingOptions(temperature=0.7, seed=s) for s in range(3)]):
        params = SamplingParams.from_options(options, device=DEVICE, positions=[4] * 3)
        tokens, logprobs = sampler.sample(logits, params, params.positions)
        got_tokens, record = sampler.sample_record(logits, params, params.positions)
        assert torch.equal(got_tokens, tokens) and record.device == logits.device
        host = torch.zeros((2, 3), dtype=torch.float64)  # not taken: no device seen to write it
        assert sampler.sample_record(logits, params, params.positions, host=host)[1] is not host
        assert record.dtype == torch.float64 and record[0].tolist() == [float(t) for t in tokens.tolist()]
        torch.testing.assert_close(record[1], logprobs.to(torch.float64), rtol=4e-6, atol=4e-6)
