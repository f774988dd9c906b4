"""A step's tokens: sample them, launch the next decode ahead, then handle each token.

    sample (device) -> start the tokens' copy to the host -> [overlap: launch decode n+1]
    -> wait for the copy -> per token: stop checks, Guardian, events (token_path.py)

A mixin of :class:`~lil_sparse.engine.llm_engine.LLMEngine` (see request_finish.py for why a
mixin). Failures stay where they belong: a row whose sampling fails fails alone
(:class:`StepSampler`), a token whose handling fails fails its request, and a failed model call
(the decode launched ahead included, after its requests' tokens of this step are handled)
fails the requests it ran (their pages are freed); the engine goes on.
"""

from __future__ import annotations

import logging
import time

import torch

from lil_sparse.config import EngineConfig
from lil_sparse.engine.overlap import Overlap, runs_ahead
from lil_sparse.engine.sequence import Sequence, SequenceStatus
from lil_sparse.engine.step_sampler import StepSampler
from lil_sparse.engine.token_path import TokenPath
from lil_sparse.events import TokenEvent

logger = logging.getLogger("lil_sparse.engine.llm_engine")  # one logger name for the engine's logs


class StepTokens(TokenPath):
    """Sampling and token handling of a step (see the module docstring)."""

    config: EngineConfig
    step_sampler: StepSampler
    overlap: Overlap

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[TokenEvent]:
        """Sample; launch the next decode ahead when every row may run ahead (overlap.py); then
        handle the tokens while it runs. A failed launch fails its requests after their tokens."""
        try:
            inflight = self.step_sampler.start(seqs, logits)
        except Exception:
            logger.exception("sampling a batch of %d failed; sampling its rows one by one", len(seqs))
            self.overlap.serial_steps += 1
            kept, tokens, logprobs, failed = self.step_sampler.sample_each(seqs, logits)
            events = [self._fail(seq, "sampling", error) for seq, error in failed]
            return events + self._handle_tokens(kept, tokens, logprobs)
        launch_error: Exception | None = None
        may_pause = self.guardian.may_pause_after_token
        if self.config.overlaps and runs_ahead(seqs, self._answers, self._finishing, may_pause):
            try:
                self.overlap.launch(seqs, inflight.token_ids)
            except Exception as error:
                launch_error = error
        else:
            self.overlap.serial_steps += 1
        try:
            tokens, logprobs = self.step_sampler.wait(inflight)
        except Exception as error:  # the device failed: no row has a token
            return [self._fail(seq, "sampling", error) for seq in seqs]
        events = self._handle_tokens(seqs, tokens, logprobs)
        if launch_error is not None:
            events += self._fail_forward(
                [s for s in seqs if s.status == SequenceStatus.RUNNING], launch_error
            )
        return events

    def _handle_tokens(
        self, seqs: list[Sequence], tokens: list[int], logprobs: list[float]
    ) -> list[TokenEvent]:
        events: list[TokenEvent] = []
        finished_at = time.perf_counter()
        for seq, token, logprob in zip(seqs, tokens, logprobs, strict=True):
            try:
                events += self._append_token(seq, token, logprob, finished_at)
            except Exception as error:
                events.append(self._fail(seq, "token", error))
        return events

    def _fail_stale(self, seqs: list[Sequence]) -> list[TokenEvent]:
        """Requests decoded ahead but not scheduled fail loudly rather than silently lose a token,
        except one that stopped while a Guardian check was pending: it waits for the verdict and
        then finishes without decoding again, so its row run ahead is simply dropped."""
        return [
            self._fail(s, "overlap", RuntimeError("decoded ahead but not scheduled"))
            for s in seqs
            if s.request_id not in self._finishing
        ]

    def _fail_forward(self, seqs: list[Sequence], error: Exception) -> list[TokenEvent]:
        """A model call failed: every request it ran fails (their pages are freed)."""
        logger.error("model forward failed; failing its %d requests", len(seqs), exc_info=error)
        return [self._fail(s, "model", error) for s in seqs]
