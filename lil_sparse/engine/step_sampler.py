"""Sample one token for every row of a step, isolating a row whose sampling fails.

The batch is sampled in one call with one host sync: the sampled tokens and their logprobs come
to the host together in one transfer (:meth:`StepSampler.fetch`), the only device-to-host copy
of a decode step. Host values go to the device in one non-blocking copy (the rows' sampling
settings and positions, :meth:`SamplingParams.from_packed`). A batch that keeps its requests
packs their settings once; an all-greedy one reuses its params and copies nothing. If that call
raises (a request's settings
that cannot be packed, a sampler fault), each row is sampled alone to find the culprit: the
sampler is batch invariant, so every other row gets exactly the token the batch would have given
it, and only a row that fails alone is reported as failed.
"""

from __future__ import annotations

import logging

import torch

from lil_sparse.engine.sequence import Sequence
from lil_sparse.options import SamplingOptions
from lil_sparse.sampling import Sampler, SamplingParams
from lil_sparse.sampling.params import PackedOptions

logger = logging.getLogger(__name__)


class StepSampler:
    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        # The last batch: its rows' options (held, so compared by identity), their packing and,
        # for an all-greedy batch, its params on the device.
        self._last: tuple[tuple[SamplingOptions, ...], PackedOptions] | None = None
        self._greedy: tuple[PackedOptions, torch.device, SamplingParams] | None = None

    def sample(
        self, seqs: list[Sequence], logits: torch.Tensor
    ) -> tuple[list[Sequence], list[int], list[float], list[tuple[Sequence, Exception]]]:
        """``logits: [len(seqs), V]``. Returns the rows that got a token, their tokens and
        logprobs, and the rows that failed with their exception."""
        try:
            tokens, logprobs = self._sample_rows(seqs, logits)
            return seqs, tokens, logprobs, []
        except Exception:
            logger.exception("sampling a batch of %d failed; sampling its rows one by one", len(seqs))
        kept: list[Sequence] = []
        tokens, logprobs = [], []
        failed: list[tuple[Sequence, Exception]] = []
        for row, seq in enumerate(seqs):  # the failure path only: a loop over rows is fine here
            try:
                (token,), (logprob,) = self._sample_rows([seq], logits[row : row + 1])
            except Exception as error:
                failed.append((seq, error))
            else:
                kept.append(seq)
                tokens.append(token)
                logprobs.append(logprob)
        return kept, tokens, logprobs, failed

    def _sample_rows(self, seqs: list[Sequence], logits: torch.Tensor) -> tuple[list[int], list[float]]:
        params = self._params(seqs, logits.device)
        if params.positions is None:  # _params always packs them
            raise RuntimeError("sampling params were built without positions")
        token_ids, logprobs = self.sampler.sample(logits, params, params.positions)
        return self.fetch(token_ids, logprobs)

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

    @staticmethod
    def fetch(token_ids: torch.Tensor, logprobs: torch.Tensor) -> tuple[list[int], list[float]]:
        """The one host sync of the step (the scheduler needs the tokens): ``token_ids: [B]
        int64`` and ``logprobs: [B] float32`` cross in one transfer as float64, which holds both
        exactly (ids are far below 2^53; every float32 is a float64)."""
        tokens, values = torch.stack((token_ids.to(torch.float64), logprobs.to(torch.float64))).tolist()
        return [int(token) for token in tokens], values
