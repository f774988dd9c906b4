"""Logits on which the sort and the threshold top-k / top-p filters must agree exactly, for the
tests of :mod:`lil_sparse.sampling.nucleus` (CPU) and its FlashInfer kernels (GPU).

The two filters differ only where values tie across a boundary or a nucleus sum lies within
float32 rounding of ``top_p``. :func:`tie_free_logits` makes rows without ties, and
:func:`nucleus_margin` measures, in float64, how far each row's nucleus boundary lies from one.
"""

from __future__ import annotations

import torch

from lil_sparse.sampling.nucleus import ThresholdKernels, filter_by_thresholds

# A row's distinct logits are at least this far apart (float32 steps are 1.9e-6 near 16, so the
# values stay distinct after a division by a temperature down to about 0.2).
LOGIT_GAP = 1e-5


def tie_free_logits(rows: int, vocab_size: int, seed: int, head: int = 64) -> torch.Tensor:
    """``[rows, vocab_size]`` float32 logits, distinct within each row, shaped like a model's:
    ``head`` likely tokens (``N(12, 2^2)``) over a tail (``N(-2, 1.5^2)``) that holds about 0.2%
    of the mass at temperature 1 over 151,936 tokens, so a nucleus of 0.9 or 0.95 ends inside
    the head, between tokens of visible probability. Shuffled over the vocabulary;
    deterministic in ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    head = min(head, vocab_size)
    likely = torch.randn(rows, head, generator=generator, dtype=torch.float64) * 2 + 12
    tail = torch.randn(rows, vocab_size - head, generator=generator, dtype=torch.float64) * 1.5 - 2
    values = torch.cat((likely, tail), dim=1).sort(dim=-1, descending=True).values
    values -= torch.arange(vocab_size, dtype=torch.float64) * LOGIT_GAP  # strictly decreasing
    order = torch.rand(rows, vocab_size, generator=generator).argsort(dim=-1)
    return torch.empty(rows, vocab_size).scatter_(1, order, values.float())


def nucleus_margin(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``[B]`` float64: for each row with ``top_p < 1``, the smallest ``|mass before - top_p|``
    over its top-k candidates, the mass before a candidate being the float64 softmax mass of the
    better candidates (``inf`` for rows without top-p). Both filters compute these sums in
    float32; a margin far above their rounding (1e-4 against about 1e-6) means the boundary is
    not a near-tie. ``scaled: [B, V]`` float32 without ties, ``top_k: [B]`` int64 (0: all),
    ``top_p: [B]`` float32."""
    vocab_size = scaled.shape[-1]
    ordered = scaled.double().sort(dim=-1, descending=True).values  # [B, V]
    rank = torch.arange(vocab_size, device=scaled.device).unsqueeze(0)
    k = torch.where(top_k > 0, top_k, vocab_size).clamp(max=vocab_size).unsqueeze(1)  # [B, 1]
    weights = (ordered - ordered[:, :1]).exp().masked_fill(rank >= k, 0.0)
    mass_before = (weights.cumsum(dim=-1) - weights) / weights.sum(dim=-1, keepdim=True)
    distance = (mass_before - top_p.double().unsqueeze(1)).abs().masked_fill(rank >= k, float("inf"))
    margin = distance.min(dim=-1).values
    return torch.where(top_p < 1.0, margin, float("inf"))


def filters_each_row_alone_as_in_its_batch(
    scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, kernels: ThresholdKernels
) -> bool:
    """Whether :func:`~lil_sparse.sampling.nucleus.filter_by_thresholds` with ``kernels`` gives
    every row of ``scaled: [B, V]`` (``top_k: [B]``, ``top_p: [B]``) bit for bit the same alone
    as in the batch: the batch invariance the sampler promises."""
    together = filter_by_thresholds(scaled, top_k, top_p, kernels)
    return all(
        torch.equal(
            filter_by_thresholds(scaled[r : r + 1], top_k[r : r + 1], top_p[r : r + 1], kernels)[0],
            together[r],
        )
        for r in range(scaled.shape[0])
    )
