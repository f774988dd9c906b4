"""Sample one token for every row of a step, isolating a row whose sampling fails.

The batch is sampled in one call with one host sync. If that call raises (a request's settings
that cannot be packed, a sampler fault), each row is sampled alone to find the culprit: the
sampler is batch invariant, so every other row gets exactly the token the batch would have given
it, and only a row that fails alone is reported as failed.
"""

from __future__ import annotations

import logging

import torch

from lil_sparse.engine.sequence import Sequence
from lil_sparse.sampling import Sampler, SamplingParams

logger = logging.getLogger(__name__)


class StepSampler:
    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

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
        positions = torch.tensor([s.num_prompt_tokens + s.num_output_tokens for s in seqs])
        params = SamplingParams.from_options([s.options.sampling for s in seqs], logits.device)
        token_ids, logprobs = self.sampler.sample(logits, params, positions.to(logits.device))
        # The one host sync of the step: the scheduler needs the tokens.
        return token_ids.tolist(), logprobs.tolist()
