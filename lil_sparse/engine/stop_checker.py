"""Stop checks after each token: EOS and length, plus the stop-string matching rules.

Stop strings are matched on the decoded text (see :class:`RequestOutput`, which holds back any
text that could still become a stop string). Guardian stops arrive separately.
"""

from __future__ import annotations

from lil_sparse.engine.sequence import Sequence
from lil_sparse.events import FinishReason


def find_stop_end(text: str, new_from: int, stop_strings: tuple[str, ...]) -> int | None:
    """End offset of the stop string that completes first in ``text`` among those ending after
    ``new_from`` (text before it was searched already), or None.

    The earliest end wins, because that is where a streaming reader first sees a stop string.
    """
    best: int | None = None
    for stop in stop_strings:
        index = text.find(stop, max(0, new_from - len(stop) + 1))
        if index >= 0 and (best is None or index + len(stop) < best):
            best = index + len(stop)
    return best


def stop_prefix_length(text: str, stop_strings: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string: text
    that the next tokens may turn into a stop string, so it must not be sent yet."""
    longest = 0
    for stop in stop_strings:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest


class StopChecker:
    def __init__(self, eos_token_ids: frozenset[int]) -> None:
        self.eos_token_ids = eos_token_ids

    def check(self, seq: Sequence, token: int, stop_string_hit: bool) -> FinishReason | None:
        """The finish reason after ``token`` (None to go on); ``stop_string_hit`` says whether
        the token completed a stop string. Order: stop string, EOS, length."""
        if stop_string_hit:
            return FinishReason.STOP_STRING
        stopping = seq.options.stopping
        if token in self.eos_token_ids and not stopping.ignore_eos:
            return FinishReason.EOS
        if len(seq.output_token_ids) >= stopping.max_new_tokens:
            return FinishReason.LENGTH
        return None
