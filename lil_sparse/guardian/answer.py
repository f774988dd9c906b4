"""Guardian's ``answer`` stop action: on a stop, force an answer prompt, then let the model answer.

The Lil paper's Guardian truncates: the text ends where the check said stop, often before the
answer. Serving-time early exit (s1's budget forcing, Dynasor-CoT, DEER) instead ends the
*thinking* and lets the model answer: append a prompt that asks for the answer, decode at most
``answer_max_tokens`` more, then finish with ``early_stop``.

The forced prompt goes through ordinary decode steps: each forced token replaces the token the
step sampled, so the next step feeds it to the model (no extra prefill path). Forced tokens have
no sampled log-probability; they are reported as NaN.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from lil_sparse.events import GuardianReport

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# A short suffix that the math prompts (``\boxed{}``) and most instruction-tuned models follow.
ANSWER_SUFFIX = "\n\nFinal answer: \\boxed{"
FORCED_LOGPROB = math.nan


def answer_prompt(sequence_text: str) -> str:
    """The text to append on a stop: close a thinking block left open (a ``<think>`` without its
    ``</think>``, as reasoning models' templates open one), then :data:`ANSWER_SUFFIX`."""
    if sequence_text.count(THINK_OPEN) > sequence_text.count(THINK_CLOSE):
        return f"\n{THINK_CLOSE}{ANSWER_SUFFIX}"
    return ANSWER_SUFFIX


@dataclass(slots=True)
class AnswerPhase:
    """One request's answer phase, from the stop to its end.

    ``thinking_tokens``: output tokens before the forced prompt. ``forced`` holds the prompt's
    token ids not yet appended; ``generated_tokens`` counts the model's own tokens after it.
    """

    thinking_tokens: int
    prompt_token_ids: tuple[int, ...]
    answer_max_tokens: int
    forced: deque[int] = field(init=False)
    generated_tokens: int = 0

    def __post_init__(self) -> None:
        if self.answer_max_tokens < 1:
            raise ValueError(f"answer_max_tokens: must be >= 1, got {self.answer_max_tokens}")
        self.forced = deque(self.prompt_token_ids)

    def next_token(self, sampled: int, logprob: float) -> tuple[int, float, bool]:
        """The token to append instead of ``sampled``: the next forced one (with a NaN logprob)
        while any is left, else ``sampled`` itself. The bool says whether it was forced."""
        if self.forced:
            return self.forced.popleft(), FORCED_LOGPROB, True
        self.generated_tokens += 1
        return sampled, logprob, False

    @property
    def done(self) -> bool:
        """The prompt is in and the model has had its ``answer_max_tokens``."""
        return not self.forced and self.generated_tokens >= self.answer_max_tokens

    def fill(self, report: GuardianReport, output_tokens: int) -> None:
        """Fill the report's answer fields for a request that kept ``output_tokens`` tokens (fewer
        than appended when it ended by an abort or an error: only released tokens stay)."""
        after_stop = max(0, output_tokens - self.thinking_tokens)
        report.answer_started_at = self.thinking_tokens
        report.answer_prompt_tokens = min(after_stop, len(self.prompt_token_ids))
        report.answer_tokens = after_stop - report.answer_prompt_tokens
