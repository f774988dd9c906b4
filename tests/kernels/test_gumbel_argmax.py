"""The Gumbel-max sample with the noise made inside the argmax kernel
(:func:`lil_sparse.kernels.row_argmax.gumbel_argmax`) against the sampler's reference: the
PyTorch noise of :mod:`lil_sparse.sampling.noise` added to the logits, then ``argmax``. On CPU
in Triton's interpreter; tests/kernels runs on the H200 too."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
import triton
import triton.language as tl

from lil_sparse.kernels.gumbel_noise import gumbel_at, row_key
from lil_sparse.kernels.row_argmax import BLOCK, gumbel_argmax
from lil_sparse.sampling.noise import gumbel_noise, row_keys

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(scaled: torch.Tensor, seed: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return (scaled + gumbel_noise(seed, positions, scaled.shape[1])).argmax(dim=-1)


def row_inputs(rows: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    seed = torch.randint(0, 2**63 - 1, (rows,), generator=gen, dtype=torch.int64)
    positions = torch.randint(0, 40000, (rows,), generator=gen, dtype=torch.int64)
    return seed.to(DEVICE), positions.to(DEVICE)


@triton.jit
def _noise_rows(seed_ptr, position_ptr, out_ptr, vocab, BLOCK_V: tl.constexpr):
    row = tl.program_id(0)
    index = tl.arange(0, BLOCK_V)
    key = row_key(tl.load(seed_ptr + row), tl.load(position_ptr + row))
    tl.store(out_ptr + row * vocab + index, gumbel_at(key, index.to(tl.int64)), mask=index < vocab)


def test_the_noise_is_the_samplers_up_to_the_last_bits_of_its_logs():
    gen = torch.Generator().manual_seed(0)
    seed, positions = row_inputs(4, gen)
    seed[0] = 2**63 - 1  # the largest seed: the hash's int64 products must stay exact
    vocab = 3000
    got = torch.empty(4, vocab, device=DEVICE)
    _noise_rows[(4,)](seed, positions, got, vocab, BLOCK_V=4096)
    want = gumbel_noise(seed, positions, vocab)
    assert torch.isfinite(got).all()
    # float32 noise in about [-2.8, 17.3]: two logarithms apart, within a few ulps of |x| <= 17.
    assert torch.allclose(got, want, rtol=1e-6, atol=4e-6)
    assert row_keys(seed, positions).max() < 2**32


@pytest.mark.parametrize("rows, vocab", [(1, 7), (3, BLOCK), (5, 2 * BLOCK + 77)])
def test_gumbel_argmax_samples_what_the_reference_samples(rows, vocab):
    gen = torch.Generator().manual_seed(rows * 1000 + vocab)
    seed, positions = row_inputs(rows, gen)
    scaled = (torch.randn(rows, vocab, generator=gen) * 3).to(DEVICE)
    before = scaled.clone()
    tokens = gumbel_argmax(scaled, seed, positions)
    assert tokens.dtype == torch.int64 and tokens.shape == (rows,)
    assert torch.equal(tokens, reference(scaled, seed, positions))
    assert torch.equal(scaled, before)  # the logits are read, not written
    # Flat logits: the noise alone decides, so every row checks the hash end to end.
    flat = torch.zeros(rows, vocab, device=DEVICE)
    assert torch.equal(gumbel_argmax(flat, seed, positions), reference(flat, seed, positions))


def test_filtered_entries_are_never_sampled_and_rows_are_batch_invariant():
    gen = torch.Generator().manual_seed(5)
    rows, vocab = 6, BLOCK + 300
    seed, positions = row_inputs(rows, gen)
    scaled = torch.randn(rows, vocab, generator=gen).to(DEVICE)
    keep = torch.zeros(rows, vocab, dtype=torch.bool, device=DEVICE)
    keep[0, 17] = True  # one candidate: always taken
    keep[1, torch.randperm(vocab, generator=gen)[:40].to(DEVICE)] = True  # a top-k of 40
    keep[2:] = True
    scaled = scaled.masked_fill(~keep, float("-inf"))
    tokens = gumbel_argmax(scaled, seed, positions)
    assert tokens[0] == 17 and keep[1, tokens[1]]
    assert torch.equal(tokens, reference(scaled, seed, positions))
    for row in range(rows):  # a row alone samples what it samples in the batch
        alone = gumbel_argmax(scaled[row : row + 1], seed[row : row + 1], positions[row : row + 1])
        assert alone.item() == tokens[row].item()
    # Another position of the same seed draws other noise (the counter includes the position).
    moved = gumbel_argmax(torch.zeros(rows, vocab, device=DEVICE), seed, positions + 1)
    assert not torch.equal(moved, gumbel_argmax(torch.zeros(rows, vocab, device=DEVICE), seed, positions))


@pytest.mark.parametrize(
    "scaled, seed, match",
    [
        (torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, dtype=torch.int64), "float32"),
        (torch.zeros(2, 5), torch.zeros(3, dtype=torch.int64), "seed"),
        (torch.zeros(2, 5), torch.zeros(2, dtype=torch.int32), "seed"),
    ],
)
def test_gumbel_argmax_refuses_what_it_cannot_read(scaled, seed, match):
    with pytest.raises(ValueError, match=match):
        gumbel_argmax(scaled.to(DEVICE), seed.to(DEVICE), torch.zeros(2, dtype=torch.int64, device=DEVICE))


def test_sampler_with_the_noise_in_the_argmax_samples_the_same_tokens():
    """The default sampler (``noise_in_argmax=True``) against the noise tensor
    (``noise_in_argmax=False``, the reference) on a batch mixing greedy, plain, top-k and top-p
    rows (on CUDA the kernel path; elsewhere both take the reference)."""
    from lil_sparse.options import SamplingOptions
    from lil_sparse.sampling import SamplingParams
    from lil_sparse.sampling.sampler import Sampler

    gen = torch.Generator().manual_seed(9)
    rows, vocab = 8, 5000
    logits = (torch.randn(rows, vocab, generator=gen) * 2).to(DEVICE)
    options = [
        SamplingOptions(temperature=[0.0, 0.6, 1.0, 0.8][i % 4], top_k=[0, 0, 40, 0][i % 4],
                        top_p=[1.0, 1.0, 1.0, 0.95][i % 4], seed=100 + i)
        for i in range(rows)
    ]  # fmt: skip
    params = SamplingParams.from_options(options, device=DEVICE)
    positions = torch.arange(rows, device=DEVICE) * 13 + 5
    want_tokens, want_logprobs = Sampler(noise_in_argmax=False).sample(logits, params, positions)
    got_tokens, got_logprobs = Sampler().sample(logits, params, positions)
    assert torch.equal(got_tokens, want_tokens)
    assert torch.equal(got_logprobs, want_logprobs)  # log_softmax at the token, without noise
    assert len(set(got_tokens.tolist())) > 1  # the rows sampled, not all the same pick
