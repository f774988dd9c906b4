"""Each row's argmax of a step's logits, what ``log_softmax`` at a token needs, and the logits
that travel with it.

The sampler needs every row's argmax whatever the batch asks for (the greedy rows' tokens) and
``log_softmax`` at the chosen token. A decode step's CUDA graph computes them with its logits
(:mod:`lil_sparse.engine.cuda_graphs`), so they cost no launches of their own; the logits then
travel as :class:`StepLogits` with their :class:`Argmax`, and the sampler uses it instead of
computing it again. Any change of rows (a subset, a reorder, a concatenation with other logits)
drops it: the sampler then computes it from the logits, with the same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lil_sparse.kernels import TRITON_AVAILABLE


@dataclass(frozen=True)
class Argmax:
    """Each row's argmax of ``logits: [B, V]`` float32 (``tokens: [B]`` int64) and what
    ``log_softmax(logits)`` at a token needs. On CUDA (:func:`row_argmax`) ``row_max`` and
    ``log_sum = log(sum(exp(x - max)))`` (``[B]`` float32) from
    :func:`~lil_sparse.kernels.row_argmax.argmax_logsumexp`; off CUDA both None and the
    log-probabilities come from ``log_softmax`` itself (the reference). With ``pick`` (a decode
    step's graph: :func:`~lil_sparse.kernels.row_argmax.greedy_pick`) also ``own: [B]`` float32,
    the argmax's log-probability, and ``pairs: [B, 2]`` float64, (argmax, ``own``) per row, the
    host record of an all-greedy step."""

    logits: torch.Tensor
    tokens: torch.Tensor
    row_max: torch.Tensor | None = None
    log_sum: torch.Tensor | None = None
    own: torch.Tensor | None = None
    pairs: torch.Tensor | None = None

    def log_probs(self, at: torch.Tensor) -> torch.Tensor:
        """``log_softmax(logits)`` at tokens ``at: [B]`` int64 -> ``[B]`` float32; on CUDA as
        ``log_softmax`` computes it, ``(x[t] - max) - log_sum``."""
        if self.row_max is None or self.log_sum is None:
            return self.logits.log_softmax(dim=-1).gather(-1, at.unsqueeze(1)).squeeze(1)
        return (self.logits.gather(-1, at.unsqueeze(1)).squeeze(1) - self.row_max) - self.log_sum

    def own_log_probs(self) -> torch.Tensor:
        """:meth:`log_probs` at the argmax: ``own`` when computed with it, else on CUDA
        ``-log_sum`` (there ``x[t] - max`` is exactly 0, or NaN where ``log_sum`` is NaN too)."""
        if self.own is not None:
            return self.own
        if self.log_sum is None:
            return self.log_probs(self.tokens)
        return self.log_sum.neg()

    def head(self, count: int) -> Argmax:
        """The first ``count`` rows (views: no copy), as for ``logits[:count]``."""
        return Argmax(*(None if t is None else t[:count] for t in self._fields()))  # type: ignore[arg-type]

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return (self.logits, self.tokens, self.row_max, self.log_sum, self.own, self.pairs)


def row_argmax(logits: torch.Tensor, pick: bool = False) -> Argmax:
    """:class:`Argmax` of ``logits: [B, V]`` float32: on CUDA two short Triton kernels instead of
    PyTorch's one reduction block per row (:mod:`lil_sparse.kernels.row_argmax`; ``pick`` adds
    ``own`` and ``pairs`` from the same launches), elsewhere ``logits.argmax(dim=-1)``. No host
    sync."""
    if not (logits.is_cuda and TRITON_AVAILABLE):
        return Argmax(logits, logits.argmax(dim=-1))
    from lil_sparse.kernels.row_argmax import argmax_logsumexp, greedy_pick

    if pick:
        return Argmax(logits, *greedy_pick(logits))
    return Argmax(logits, *argmax_logsumexp(logits))


@dataclass(frozen=True)
class StepLogits:
    """A step's next-token logits ``values: [N, V]`` float32, one row per request that gets a
    token, and their :class:`Argmax` when it was computed with them (a decode step's graph), else
    None. Valid as long as ``values`` is (a graph's buffers: until the runner's next decode)."""

    values: torch.Tensor
    argmax: Argmax | None = None

    def __post_init__(self) -> None:
        if self.argmax is not None and self.argmax.tokens.shape[0] != self.values.shape[0]:
            raise ValueError(
                f"argmax: {self.argmax.tokens.shape[0]} rows for {self.values.shape[0]} rows of logits"
            )

    @property
    def num_rows(self) -> int:
        return self.values.shape[0]

    def head(self, count: int) -> StepLogits:
        """The first ``count`` rows with their argmax (views: a padded step's real rows)."""
        argmax = None if self.argmax is None else self.argmax.head(count)
        return StepLogits(self.values[:count], argmax)

    def rows(self, index: torch.Tensor) -> StepLogits:
        """The rows at ``index: [M] int64`` (on the logits' device), without their argmax."""
        return StepLogits(self.values[index])

    def clone(self) -> StepLogits:
        """A copy that outlives the buffers these logits live in (their argmax dropped)."""
        return StepLogits(self.values.clone())

    @staticmethod
    def cat(parts: list[StepLogits]) -> StepLogits:
        """The parts' rows in order: one part as it is, several concatenated (argmax dropped)."""
        if len(parts) == 1:
            return parts[0]
        return StepLogits(torch.cat([part.values for part in parts]))
