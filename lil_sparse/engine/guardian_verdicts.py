"""Guardian verdicts applied at the start of a step, and the ``answer`` stop action.

A verdict on a request's pending check either stops it (cut at the check, or, with the action
``answer``, start its answer phase: lil_sparse/guardian/answer.py), or lets it go on: release the
tokens held back behind the check, or finish a request that stopped while the check was pending.

A mixin of :class:`~lil_sparse.engine.llm_engine.LLMEngine` (see request_finish.py for why a
mixin).
"""

from __future__ import annotations

from lil_sparse.engine.request_finish import RequestFinisher
from lil_sparse.engine.sequence import Sequence, SequenceStatus
from lil_sparse.events import FinishReason, TokenEvent
from lil_sparse.guardian.answer import AnswerPhase, answer_prompt
from lil_sparse.loading.tokenizer import Tokenizer


class GuardianVerdicts(RequestFinisher):
    """What the step does with Guardian's verdicts (see the module docstring)."""

    tokenizer: Tokenizer

    def _paused(self, seq: Sequence) -> bool:
        """Waiting for its Guardian verdict: stopped already, or too far ahead of a pending check."""
        return seq.request_id in self._finishing or self.guardian.lagging(seq)

    def _apply_guardian(self) -> list[TokenEvent]:
        events: list[TokenEvent] = []
        for request_id, verdict in self.guardian.collect():
            seq = self._sequences.get(request_id)
            if seq is None or seq.status != SequenceStatus.RUNNING:
                continue
            if isinstance(verdict, Exception):
                events.append(self._fail(seq, "guardian", verdict))
            elif verdict.stop and seq.options.guardian.action == "answer":
                try:
                    self._start_answer(seq, verdict.generated_tokens)
                except Exception as error:
                    events.append(self._fail(seq, "guardian answer", error))
            elif verdict.stop:  # cut the output at the check; the tokens after it were held back
                seq.guardian_report.applied_at_step = verdict.generated_tokens
                events.append(self._finish(seq, FinishReason.EARLY_STOP, verdict.generated_tokens))
            elif (gate := self.guardian.gate(request_id)) is not None:
                events += self._release(seq, gate)
            elif request_id in self._finishing:
                events.append(self._finish(seq, self._finishing[request_id]))
            else:
                events += self._release(seq, seq.num_output_tokens)
        return events

    def _start_answer(self, seq: Sequence, stop_step: int) -> None:
        """End the thinking at the check after ``stop_step`` tokens: from the next token on, append
        the answer prompt, then decode at most ``answer_max_tokens`` more. No check runs after.

        Such a request pauses at every pending check (:class:`GuardianDriver`), so its output ends
        exactly at the check: no token was decoded past it, nothing is discarded, and the KV the
        answer attends is that of the kept tokens only.
        """
        if seq.num_output_tokens != stop_step:  # the pause at each check makes this impossible
            raise RuntimeError(
                f"answer: {seq.num_output_tokens - stop_step} tokens were decoded past the stop check"
            )
        output = self._outputs[seq.request_id]
        prompt_text = self.tokenizer.decode(seq.prompt_token_ids, skip_special_tokens=False)
        forced = tuple(self.tokenizer.encode(answer_prompt(prompt_text + output.decoded)))
        self._answers[seq.request_id] = AnswerPhase(stop_step, forced, seq.options.guardian.answer_max_tokens)
        self.guardian.close_checks(seq)
        seq.guardian_report.applied_at_step = stop_step
