"""Stop checks after each token: stop strings, EOS, length. Guardian stops arrive separately."""

from __future__ import annotations

from lil_sparse.engine.sequence import Sequence
from lil_sparse.events import FinishReason


class StopChecker:
    def __init__(self, eos_token_ids: frozenset[int]) -> None:
        self.eos_token_ids = eos_token_ids

    def check(self, seq: Sequence, token: int, delta: str) -> tuple[FinishReason | None, str]:
        """The finish reason after ``token`` (None to go on) and the text delta to emit.

        A stop string stays in the output (as vLLM's ``include_stop_str_in_output``), so the
        streamed deltas always add up to the final text.
        """
        stopping = seq.options.stopping
        if stopping.stop_strings:
            longest = max(len(s) for s in stopping.stop_strings)
            # Only text that the new delta completed can hold a new match.
            start = max(0, len(seq.output_text) - len(delta) - longest + 1)
            if any(seq.output_text.find(s, start) >= 0 for s in stopping.stop_strings):
                return FinishReason.STOP_STRING, delta
        if not stopping.ignore_eos and token in self.eos_token_ids:
            return FinishReason.EOS, delta
        if seq.num_output_tokens >= stopping.max_new_tokens:
            return FinishReason.LENGTH, delta
        return None, delta
