"""The end of a request and the release of its text: the engine's output side.

A request ends in exactly one final :class:`TokenEvent` (its report attached) built by
:meth:`RequestFinisher._finish`, whatever ends it: a stop check, a Guardian verdict, an abort or
a failure (``FinishReason.ERROR``, the request alone). Before that, :meth:`_release` hands out
the tokens and text the client may see.

A mixin of :class:`~lil_sparse.engine.llm_engine.LLMEngine`: the methods read the engine's
per-request tables and its parts (scheduler, pages, Guardian) through ``self``, so a part a test
or the server replaces on the engine is the one they use.
"""

from __future__ import annotations

import logging

from lil_sparse.engine.guardian_driver import GuardianDriver
from lil_sparse.engine.page_manager import PageManager
from lil_sparse.engine.request_output import RequestOutput
from lil_sparse.engine.scheduler import Scheduler
from lil_sparse.engine.sequence import Sequence
from lil_sparse.events import FinishReason, TokenEvent
from lil_sparse.guardian.answer import AnswerPhase

logger = logging.getLogger("lil_sparse.engine.llm_engine")  # one logger name for the engine's logs


class RequestFinisher:
    """Releases tokens to the client and finishes requests (see the module docstring)."""

    scheduler: Scheduler
    pages: PageManager
    guardian: GuardianDriver
    _sequences: dict[str, Sequence]
    _outputs: dict[str, RequestOutput]
    _finishing: dict[str, FinishReason]  # stopped, waiting for a Guardian verdict
    _answers: dict[str, AnswerPhase]  # Guardian action "answer": requests answering

    def _release(self, seq: Sequence, upto: int, answer: bool = False) -> list[TokenEvent]:
        first, upto, logprobs, text = self._outputs[seq.request_id].release(upto)
        if upto == first and not text:
            return []
        tokens = tuple(seq.output_token_ids[first:upto])
        return [TokenEvent(seq.request_id, tokens, text, tuple(logprobs), answer=answer)]

    def _kept(self, seq: Sequence) -> int:
        """Tokens a request keeps when it ends early (abort, error): those already released."""
        output = self._outputs.get(seq.request_id)
        return output.released if output is not None else 0

    def _fail(self, seq: Sequence, stage: str, error: BaseException) -> TokenEvent:
        """Finish one request with ``ERROR`` after a failure in ``stage`` (logged with its traceback)."""
        logger.error("request %s failed in %s", seq.request_id, stage, exc_info=error)
        return self._finish(seq, FinishReason.ERROR, self._kept(seq), f"{stage}: {error!r}")

    def _finish(
        self, seq: Sequence, reason: FinishReason, kept: int | None = None, error: str = ""
    ) -> TokenEvent:
        """Free everything the sequence holds and build its final event.

        ``kept`` (default: all) output tokens stay; the final event carries the ones not yet
        released and the rest of the text, which is ``decode(kept ids)`` cut after a stop string.
        """
        kept = seq.num_output_tokens if kept is None else kept
        output = self._outputs.pop(seq.request_id, None)
        first, text, logprobs = kept, "", list[float]()
        if output is not None:
            try:
                first, _, logprobs, text, stopped = output.finish(seq.output_token_ids[:kept])
                if stopped and reason in (FinishReason.LENGTH, FinishReason.EOS):
                    reason = FinishReason.STOP_STRING  # the last characters completed a stop string
                seq.output_text = output.emitted
            except Exception as failure:  # a broken tokenizer must not keep the pages
                logger.error("request %s: final text failed", seq.request_id, exc_info=failure)
                first, reason = output.released, FinishReason.ERROR
                kept, seq.output_text = first, output.emitted
                error = error or f"detokenizer: {failure!r}"
        seq.keep_outputs(kept)
        self._finishing.pop(seq.request_id, None)
        answer = self._answers.pop(seq.request_id, None)
        self._sequences.pop(seq.request_id, None)
        # Each part frees what it holds even if another part raised: a failure here is this
        # request's alone (it ends in ERROR), never a reason to keep pages or stop the step.
        for part, release in (
            ("scheduler", self.scheduler.finish),
            ("pages", self.pages.release),
            ("guardian", self.guardian.release),
        ):
            try:
                release(seq)
            except Exception as failure:
                logger.error("request %s: releasing its %s failed", seq.request_id, part, exc_info=failure)
                reason, error = FinishReason.ERROR, error or f"{part} release: {failure!r}"
        if answer is not None:
            answer.fill(seq.guardian_report, seq.num_output_tokens)
        report = seq.report(reason, error)
        tokens = tuple(seq.output_token_ids[first:])
        # After an answer started, every token not released yet is an answer token.
        return TokenEvent(seq.request_id, tokens, text, tuple(logprobs), reason, report, answer is not None)
