"""Sample one token for every row of a step, isolating a row whose sampling fails.

The batch is sampled in one call, and the sampled tokens and their logprobs start for the host
together in one non-blocking transfer (:meth:`StepSampler.start`): for an all-greedy batch whose
logits came with their argmax (a decode step's CUDA graph computes it, and the host record of
its pick, :class:`~lil_sparse.sampling.StepLogits`) that transfer is the step's only work
outside the graph; :meth:`StepSampler.wait` is
the one host sync of a decode step, and it waits on that copy's CUDA event, not on the stream,
so work queued after the copy (overlap scheduling's next decode step, which reads the tokens
still on the device) keeps the GPU busy while the host reads them. Host values go to the device
in one non-blocking copy (the rows' sampling settings and positions,
:meth:`SamplingParams.from_packed`). A batch that keeps its requests packs their settings once;
an all-greedy one reuses its params and copies nothing. If the batch call raises (a request's
settings that cannot be packed, a sampler fault), each row is sampled alone to find the culprit
(:meth:`StepSampler.sample_each`): the sampler is batch invariant, so every other row gets
exactly the token the batch would have given it, and only a row that fails alone is reported as
failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lil_sparse.engine.sequence import Sequence
from lil_sparse.options import SamplingOptions
from lil_sparse.sampling import Argmax, Sampler, SamplingParams, StepLogits
from lil_sparse.sampling.params import PackedOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TokensInFlight:
    """A step's sampled tokens on their way to the host.

    ``token_ids: [B] int64`` on the device (what a decode step launched ahead feeds; it may be a
    CUDA graph's buffer, valid until the runner's next decode);
    ``host: [B, 2] float64``, each row's token and logprob (pinned memory on CUDA), valid once
    ``ready`` (the copy's event; None on CPU, where the copy is done already) has completed.
    """

    token_ids: torch.Tensor
    host: torch.Tensor
    ready: torch.cuda.Event | None


class StepSampler:
    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        # The last batch: its rows' options (held, so compared by identity), their packing and,
        # for an all-greedy batch, its params on the device.
        self._last: tuple[tuple[SamplingOptions, ...], PackedOptions] | None = None
        self._greedy: tuple[PackedOptions, torch.device, SamplingParams] | None = None

    def sample(
        self, seqs: list[Sequence], logits: StepLogits
    ) -> tuple[list[Sequence], list[int], list[float], list[tuple[Sequence, Exception]]]:
        """``logits``: ``len(seqs)`` rows. Returns the rows that got a token, their tokens and
        logprobs, and the rows that failed with their exception (:meth:`start` then
        :meth:`wait`, or :meth:`sample_each` when the batch call raises)."""
        try:
            tokens, logprobs = self.wait(self.start(seqs, logits))
            return seqs, tokens, logprobs, []
        except Exception:
            logger.exception("sampling a batch of %d failed; sampling its rows one by one", len(seqs))
        return self.sample_each(seqs, logits)

    def start(self, seqs: list[Sequence], logits: StepLogits) -> TokensInFlight:
        """Sample every row of ``logits`` (``len(seqs)`` rows) in one call and start the copy of
        the tokens and logprobs to the host; nothing here waits for the device. Raises what the
        batch call raises (then :meth:`sample_each` finds the failing rows)."""
        params = self._params(seqs, logits.values.device)
        if params.positions is None:  # _params always packs them
            raise RuntimeError("sampling params were built without positions")
        token_ids, logprobs = self.sampler.sample(
            logits.values, params, params.positions, argmax=logits.argmax
        )
        stacked = self.host_record(logits.argmax, token_ids, logprobs)
        if stacked.device.type != "cuda":
            return TokensInFlight(token_ids, stacked, None)
        host = torch.empty(stacked.shape, dtype=torch.float64, pin_memory=True)
        host.copy_(stacked, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return TokensInFlight(token_ids, host, ready)

    @staticmethod
    def host_record(argmax: Argmax | None, token_ids: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """What goes to the host for sampled ``token_ids: [B] int64`` and ``logprobs: [B]
        float32``: ``[B, 2]`` float64, each row's token and logprob (float64 holds both
        exactly: ids < 2^53, every float32). When the sampler returned the greedy pick that came
        with the logits (an all-greedy batch), the record the step's graph made with it
        (``argmax.pairs``); else one stack of the two."""
        if argmax is not None and argmax.pairs is not None:  # noqa: SIM102 (one test per line)
            if token_ids is argmax.tokens and logprobs is argmax.own:
                return argmax.pairs
        return torch.stack((token_ids.to(torch.float64), logprobs.to(torch.float64)), dim=1)

    def wait(self, tokens: TokensInFlight) -> tuple[list[int], list[float]]:
        """The one host sync of the step (the scheduler needs the tokens): wait for the copy
        :meth:`start` began (its event only) and read it."""
        if tokens.ready is not None:
            tokens.ready.synchronize()
        rows = tokens.host.tolist()
        return [int(token) for token, _ in rows], [logprob for _, logprob in rows]

    def sample_each(
        self, seqs: list[Sequence], logits: StepLogits
    ) -> tuple[list[Sequence], list[int], list[float], list[tuple[Sequence, Exception]]]:
        """The failure path: sample each row alone (a loop over rows is fine here). Returns
        what :meth:`sample` returns."""
        kept: list[Sequence] = []
        tokens, logprobs = [], []
        failed: list[tuple[Sequence, Exception]] = []
        for row, seq in enumerate(seqs):
            try:
                row_logits = StepLogits(logits.values[row : row + 1])
                (token,), (logprob,) = self.wait(self.start([seq], row_logits))
            except Exception as error:
                failed.append((seq, error))
            else:
                kept.append(seq)
                tokens.append(token)
                logprobs.append(logprob)
        return kept, tokens, logprobs, failed

    def _params(self, seqs: list[Sequence], device: torch.device) -> SamplingParams:
        """The rows' :class:`SamplingParams` with their positions. The options of a batch that
        keeps its requests are packed once (the tuple compares its elements by identity first:
        O(B), no copy). A greedy row reads no noise, so an all-greedy batch packs zeros as
        positions and its params serve every later step of the same requests."""
        options = tuple(s.options.sampling for s in seqs)
        last = self._last
        if last is None or last[0] != options:
            last = self._last = (options, PackedOptions.pack(options))
        packed = last[1]
        if packed.all_greedy:
            greedy = self._greedy
            if greedy is None or greedy[0] is not packed or greedy[1] != device:
                params = SamplingParams.from_packed(packed, device, [0] * len(options))
                greedy = self._greedy = (packed, device, params)
            return greedy[2]
        positions = [s.num_prompt_tokens + s.num_output_tokens for s in seqs]
        return SamplingParams.from_packed(packed, device, positions)
