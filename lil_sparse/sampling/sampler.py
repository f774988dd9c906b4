"""Draw the next token of every row: greedy, or temperature, top-k, top-p and Gumbel-max."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lil_sparse.kernels import TRITON_AVAILABLE
from lil_sparse.options import SamplingOptions
from lil_sparse.sampling.noise import gumbel_noise
from lil_sparse.sampling.nucleus import filter_by_thresholds, flashinfer_kernels, threshold_filter_available
from lil_sparse.sampling.params import SamplingParams

# Temperatures below this are clamped: the row is then greedy in all but ties, and scaled
# logits stay far from float32 overflow (which would turn softmax into NaN).
MIN_TEMPERATURE = 1e-5


def filter_top_k_top_p(
    scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, max_top_k: int = 0
) -> torch.Tensor:
    """Set logits outside each row's top-k, then outside its top-p nucleus, to -inf: the
    reference (the CPU path, and the oracle of :func:`~lil_sparse.sampling.nucleus.filter_by_thresholds`,
    which :class:`Sampler` runs on CUDA instead of this sort).

    scaled: [B, V] float32 logits (already divided by temperature).
    top_k:  [B] int64, 0 keeps all. top_p: [B] float32, 1.0 keeps all.
    max_top_k: when > 0, no filtering row keeps more than this many tokens (every row with a
        filter has ``0 < top_k <= max_top_k``), so the candidates come from a top-k of that width
        instead of a full sort of the vocabulary. The result is the same.
    Returns [B, V] float32. Each row uses only its own settings: a row with neither filter
    (``top_k == 0`` and ``top_p == 1``) comes back unchanged, whatever its batch mates ask for.
    The nucleus is the smallest set of the most likely tokens (after top-k, renormalised) whose
    probability reaches ``top_p``; the most likely token always stays. The nucleus test reads a
    running sum over the row's own top-k candidates only (``cumsum`` up to rank ``k - 1``), so
    candidates beyond the row's k, which a wider batch mate brings in, never enter it (exactly
    on the CPU, whose scan is sequential; a GPU scan may round a prefix differently for another
    width, which matters only for a nucleus boundary tied at float32 precision). Tokens tied in
    value across the top-k or nucleus boundary are kept in the order the sort leaves them.
    The nucleus is that of Holtzman et al. 2020 ("The Curious Case of Neural Text
    Degeneration"), taken here after the top-k cut.
    """
    vocab_size = scaled.shape[-1]
    if 0 < max_top_k < vocab_size:
        sorted_logits, sorted_index = scaled.topk(max_top_k, dim=-1)  # [B, W], descending
    else:
        sorted_logits, sorted_index = scaled.sort(dim=-1, descending=True)  # [B, W = V]
    width = sorted_logits.shape[-1]
    rank = torch.arange(width, device=scaled.device).unsqueeze(0)  # [1, W]
    k = torch.where(top_k > 0, top_k, vocab_size).clamp(max=width).unsqueeze(1)  # [B, 1]
    sorted_logits = sorted_logits.masked_fill(rank >= k, float("-inf"))
    # Unnormalised probabilities relative to the row's best logit (rank 0, always finite).
    weights = (sorted_logits - sorted_logits[:, :1]).exp()  # [B, W], 0 beyond k
    running = weights.cumsum(dim=-1)  # [B, W]
    total = running.gather(1, k - 1)  # [B, 1] the row's own top-k mass
    mass_before = running - weights  # [B, W] mass of the strictly better tokens
    # A token belongs to the nucleus while the better tokens still fall short of top_p.
    # top_p == 1 keeps every candidate: rounding must not push the tail's mass_before to total.
    nucleus = (top_p < 1.0).unsqueeze(1)  # [B, 1]
    outside = (mass_before >= top_p.unsqueeze(1) * total) & (rank > 0) & nucleus
    sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
    filtered = torch.full_like(scaled, float("-inf")).scatter_(-1, sorted_index, sorted_logits)
    keeps_all = ((top_k == 0) & (top_p >= 1.0)).unsqueeze(1)  # [B, 1] rows without a filter
    return torch.where(keeps_all, scaled, filtered)


def host_record(token_ids: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """The step's host record of ``token_ids: [B]`` int64 and ``logprobs: [B]`` float32: ``[2, B]``
    float64, the tokens then their logprobs (float64 holds both exactly: ids are far below 2^53,
    and every float32 is a float64); what :meth:`Sampler.sample_record` returns for a batch that
    samples."""
    return torch.stack((token_ids.to(torch.float64), logprobs.to(torch.float64)))


class Sampler:
    """Stateless: every random choice comes from (seed, position), never from a generator.

    ``compile_noise=True`` fuses the noise hash (about 20 elementwise int64 passes over [B, V])
    into one kernel with ``torch.compile``: bit-identical noise, measured on an H100 at B=64,
    V=152064 as 0.07 ms instead of 1.1 ms per step, for a one-off compile of about 10 s.

    Batch invariance: a row's token depends only on its logits, options and position. Each row
    applies its own top-k and top-p (see :func:`filter_top_k_top_p`); a row without filters is
    never filtered, and a filtering row's nucleus sums only its own candidates.
    """

    def __init__(
        self, compile_noise: bool = False, noise_in_argmax: bool = True, threshold_filter: bool = True
    ) -> None:
        """``noise_in_argmax`` (the default): on CUDA, make the Gumbel noise inside the argmax
        kernel (:func:`~lil_sparse.kernels.row_argmax.gumbel_argmax`: one read of the ``[B, V]``
        logits, no noise tensor) instead of :func:`gumbel_noise` then the argmax. The same
        tokens but where the float32 logarithms of the noise differ in their last bit. Measured
        (``bench/sampler_micro.py``, H200, 2026-12-01 06:49 UTC, docs/bench/sampler_micro.md):
        one sampling call at temperature 0.6 took 259 instead of 917 us at batch 1 and 262
        instead of 1332 us at batch 64, with top-p 0.95 777 instead of 1581 us at batch 1; the
        same tokens in all twelve cases. ``False`` keeps the noise tensor (the CPU path and the
        reference).

        ``threshold_filter`` (the default): on CUDA with FlashInfer importable, filter top-k and
        top-p with :func:`~lil_sparse.sampling.nucleus.filter_by_thresholds` (FlashInfer's
        radix top-k mask and top-p threshold search, no sort of the vocabulary) instead of
        :func:`filter_top_k_top_p`; the same kept sets but for values tied, or sums within
        float32 rounding, at a boundary. Measured (``bench/sampler_micro.py``, H200, 2026-12-01
        07:06, docs/bench/sampler_micro.md, host-bound timings): the filter alone 396 against
        715 us at batch 1 with top-p 0.95, 581 against 1503 us at batch 64; at par at batch 64
        with top-k 20 or 40, where the sort path is already a narrow ``topk``. ``False`` keeps the
        sort (the CPU path and the reference)."""
        self._gumbel_noise = torch.compile(gumbel_noise, dynamic=True) if compile_noise else gumbel_noise
        self.noise_in_argmax = noise_in_argmax
        self.threshold_filter = threshold_filter
        # CUDA devices whose kernels were seen to write pinned host memory (warm_up's check):
        # there an all-greedy record lands on the host with no copy (sample_record's ``host``).
        self.writes_host: set[torch.device] = set()

    def sample(
        self, logits: torch.Tensor, params: SamplingParams, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick one token per row, without a host sync.

        logits:    [B, V] float32, the model's raw next-token logits.
        params:    :class:`SamplingParams` of the same B rows, on the logits' device.
        positions: [B] int64, the sequence position of the token being sampled (the noise of a
                   request differs at every position and repeats for the same position).
        Returns (token_ids [B] int64, logprobs [B] float32), where logprobs is
        ``log_softmax(logits)`` at the token (before temperature and filters).
        """
        logits = logits.float()
        greedy = _argmax(logits)
        if params.all_greedy:  # no row samples: skip the [B, V] noise and filters
            return greedy.tokens, greedy.own_log_probs()
        temperature = params.temperature.clamp(min=MIN_TEMPERATURE).unsqueeze(1)  # [B, 1]
        scaled = logits / temperature  # [B, V]
        if params.filtering:
            scaled = self.filter(scaled, params)
        if self.noise_in_argmax and scaled.is_cuda and TRITON_AVAILABLE:
            from lil_sparse.kernels.row_argmax import gumbel_argmax

            sampled_tokens = gumbel_argmax(scaled, params.seed, positions)
        else:
            noise = self._gumbel_noise(params.seed, positions, logits.shape[-1])  # [B, V]
            sampled_tokens = _argmax(scaled.add_(noise)).tokens  # [B]
        token_ids = torch.where(params.greedy, greedy.tokens, sampled_tokens)
        return token_ids, greedy.log_probs(token_ids)

    def sample_record(
        self,
        logits: torch.Tensor,
        params: SamplingParams,
        positions: torch.Tensor,
        host: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`sample`, with its results as the one host record a step copies: ``(token_ids
        [B] int64, record [2, B] float64)``, the record as :func:`host_record` lays it out. The
        engine's entry (:class:`~lil_sparse.engine.step_sampler.StepSampler`): a wrapper that
        records or forces tokens wraps this. An all-greedy batch on CUDA takes the record from
        the argmax's own kernel (:func:`~lil_sparse.kernels.row_argmax.greedy_record`: the same
        values as :meth:`sample`'s, without its negation, two casts and a stack), and where
        ``host`` (a pinned ``[2, B]`` float64 tensor) is given and :meth:`warm_up` saw this
        device's kernels write pinned memory, the kernel writes the record there and it is
        returned as the record: the caller's copy to the host is then done (zero-copy). Every
        other batch calls :meth:`sample` and returns the record on the logits' device. No host
        sync."""
        if params.all_greedy and logits.is_cuda and TRITON_AVAILABLE:
            from lil_sparse.kernels.row_argmax import greedy_record

            out = host if host is not None and logits.device in self.writes_host else None
            return greedy_record(logits.float(), out=out)
        token_ids, logprobs = self.sample(logits, params, positions)
        return token_ids, host_record(token_ids, logprobs)

    def filter(self, scaled: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """Each row's top-k then top-p filter of ``scaled: [B, V]`` float32 (temperature-scaled
        logits) -> ``[B, V]`` float32, ``-inf`` outside: FlashInfer's thresholds on CUDA where
        ``threshold_filter`` is set and FlashInfer imports, else the sort of
        :func:`filter_top_k_top_p`. No host sync either way."""
        if self.threshold_filter and threshold_filter_available(scaled):
            return filter_by_thresholds(scaled, params.top_k, params.top_p, flashinfer_kernels())
        return filter_top_k_top_p(scaled, params.top_k, params.top_p, params.max_top_k)

    def warm_up(self, vocab_size: int, device: torch.device) -> None:
        """Sample once, a greedy row and a row with temperature, top-k and top-p, on zero logits
        ``[2, vocab_size]`` on ``device`` (and, on CUDA, one all-greedy row's record), so every
        kernel of :meth:`sample` and :meth:`sample_record` is compiled before a request needs it,
        and, on CUDA, whether the device's kernels write pinned host memory (:meth:`sample_record`).
        On CUDA FlashInfer builds its sampling module with nvcc the first
        time one of its kernels runs on a machine (88 s on the H200, 2026-12-01 about 07:11 UTC,
        ``top_k_mask_logits`` on a fresh JIT cache, ~/.cache/flashinfer; then 0.03 s for
        ``top_p_renorm_probs``); during a request that stall would hold every stream of the
        engine. Synchronises with ``device``."""
        options = [SamplingOptions(), SamplingOptions(temperature=0.6, top_k=40, top_p=0.95, seed=0)]
        params = SamplingParams.from_options(options, device=device)
        logits = torch.zeros(2, vocab_size, dtype=torch.float32, device=device)
        tokens, _ = self.sample(logits, params, torch.zeros(2, dtype=torch.int64, device=device))
        if logits.is_cuda and TRITON_AVAILABLE:  # an all-greedy step's record (sample_record)
            from lil_sparse.kernels.row_argmax import greedy_record, kernel_writes_pinned

            greedy_record(logits[:1])
            if kernel_writes_pinned(device):
                self.writes_host.add(logits.device)
        tokens.cpu()  # the kernels have run

    @staticmethod
    def greedy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's greedy token and its log-probability, as :meth:`sample` returns them for
        an all-greedy batch: ``logits: [B, V]`` (cast to float32) -> ``(token_ids [B] int64,
        logprobs [B] float32)``. No host sync."""
        argmax = _argmax(logits.float())
        return argmax.tokens, argmax.own_log_probs()


@dataclass(frozen=True)
class _Argmax:
    """Each row's argmax of ``logits: [B, V]`` float32 (``tokens: [B]`` int64) and what
    ``log_softmax(logits)`` at a token needs. On CUDA (:func:`_argmax`) ``row_max`` and
    ``log_sum = log(sum(exp(x - max)))`` (``[B]`` float32) from
    :func:`~lil_sparse.kernels.row_argmax.argmax_logsumexp`; off CUDA both None and the
    log-probabilities come from ``log_softmax`` itself (the reference)."""

    logits: torch.Tensor
    tokens: torch.Tensor
    row_max: torch.Tensor | None = None
    log_sum: torch.Tensor | None = None

    def log_probs(self, at: torch.Tensor) -> torch.Tensor:
        """``log_softmax(logits)`` at tokens ``at: [B]`` int64 -> ``[B]`` float32; on CUDA as
        ``log_softmax`` computes it, ``(x[t] - max) - log_sum``."""
        if self.row_max is None or self.log_sum is None:
            return self.logits.log_softmax(dim=-1).gather(-1, at.unsqueeze(1)).squeeze(1)
        return (self.logits.gather(-1, at.unsqueeze(1)).squeeze(1) - self.row_max) - self.log_sum

    def own_log_probs(self) -> torch.Tensor:
        """:meth:`log_probs` at the argmax: on CUDA ``-log_sum`` (there ``x[t] - max`` is exactly
        0, or NaN where ``log_sum`` is NaN too)."""
        if self.log_sum is None:
            return self.log_probs(self.tokens)
        return self.log_sum.neg()


def _argmax(logits: torch.Tensor) -> _Argmax:
    """:class:`_Argmax` of ``logits: [B, V]`` float32: on CUDA two short Triton kernels instead
    of PyTorch's one reduction block per row (:mod:`lil_sparse.kernels.row_argmax`), elsewhere
    ``logits.argmax(dim=-1)``."""
    if not (logits.is_cuda and TRITON_AVAILABLE):
        return _Argmax(logits, logits.argmax(dim=-1))
    from lil_sparse.kernels.row_argmax import argmax_logsumexp

    return _Argmax(logits, *argmax_logsumexp(logits))
