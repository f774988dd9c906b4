"""One sampled token of one request: record it, run the stop checks, release what the client may see.

    token -> (answer phase: a forced prompt token replaces it) -> detokenizer and stop strings
          -> stop checker (EOS, length, stop strings) -> Guardian check and gate -> events

A mixin of :class:`~lil_sparse.engine.llm_engine.LLMEngine` (see request_finish.py for why a
mixin): the step calls :meth:`TokenPath._append_token` once per sampled row, inside its own
``try``, so a failure here finishes that request alone.
"""

from __future__ import annotations

from lil_sparse.engine.request_finish import RequestFinisher
from lil_sparse.engine.request_output import RequestOutput
from lil_sparse.engine.sequence import Sequence
from lil_sparse.engine.stop_checker import StopChecker
from lil_sparse.events import FinishReason, TokenEvent
from lil_sparse.guardian.answer import AnswerPhase


class TokenPath(RequestFinisher):
    """The per-token output path of a request (see the module docstring)."""

    stop_checker: StopChecker

    def _append_token(self, seq: Sequence, token: int, logprob: float, now: float) -> list[TokenEvent]:
        """Record a sampled token, run the stop checks, and release what the client may see."""
        request_id = seq.request_id
        output = self._outputs[request_id]
        answer = self._answers.get(request_id) if self._answers else None
        if answer is None and not output.stop_strings and not self.guardian.watches(request_id):
            return self._append_plain_token(seq, output, token, logprob, now)
        forced = False
        if answer is not None:  # the answer phase: a forced prompt token replaces the sampled one
            token, logprob, forced = answer.next_token(token, logprob)
        seq.output_token_ids.append(token)
        seq.token_times.append(now)
        stop_string_hit = output.push(token, logprob, forced)
        reason = self.stop_checker.check(seq, token, stop_string_hit)
        if answer is not None:
            return self._after_answer_token(seq, answer, reason, forced)
        if reason is None:
            self.guardian.after_token(seq, output.decoded)
        gate = self.guardian.gate(request_id)
        if reason is not None:
            if gate is None:
                return [self._finish(seq, reason)]
            self._finishing[request_id] = reason  # pause until the pending check decides
        return self._release(seq, seq.num_output_tokens if gate is None else gate)

    def _append_plain_token(
        self, seq: Sequence, output: RequestOutput, token: int, logprob: float, now: float
    ) -> list[TokenEvent]:
        """:meth:`_append_token` for the common request: no answer phase, no stop strings and no
        Guardian (which never has a pending check, so never a gate: guardian_driver.py). The same
        token, text and event, with the stop-string and Guardian work left out."""
        seq.output_token_ids.append(token)
        seq.token_times.append(now)
        reason = self.stop_checker.check(seq, token, False)
        if reason is not None:
            output.push(token, logprob)
            return [self._finish(seq, reason)]
        first, upto, text = output.push_and_release(token, logprob, len(seq.output_token_ids))
        if upto == first and not text:
            return []
        tokens = tuple(seq.output_token_ids[first:upto])
        return [TokenEvent(seq.request_id, tokens, text, tuple(output.logprobs[first:upto]))]

    def _after_answer_token(
        self, seq: Sequence, answer: AnswerPhase, reason: FinishReason | None, forced: bool
    ) -> list[TokenEvent]:
        """Release an answer-phase token, or finish. Any stop (the answer budget, EOS, a stop
        string, the length cap) ends the request with ``early_stop``: Guardian cut the thinking.
        A forced token never ends it but by the length cap (stop strings in forced text are not
        matched, see :class:`RequestOutput`; an EOS id in the prompt is ignored here)."""
        if forced and reason != FinishReason.LENGTH:
            reason = None
        if reason is None and not answer.done:
            return self._release(seq, seq.num_output_tokens, answer=True)
        return [self._finish(seq, FinishReason.EARLY_STOP)]
