"""What one request has generated, and how much of it the client may see yet.

Tokens are decoded as they come (incremental detokenizer), but text leaves the engine only when
it is final:

- a suffix that could be the start of a stop string is held back until the next tokens decide
  it (so no text after a stop string is ever sent);
- a stop string ends the text right after it (the stop string is kept, as vLLM's
  ``include_stop_str_in_output``), even when the token that completed it carries more text;
- tokens after a pending Guardian check are held until its verdict (the engine releases up to
  a token count, see :meth:`RequestOutput.release`);
- text of forced tokens (Guardian's ``answer`` action appends an answer prompt) never completes
  a stop string: only a stop string that ends after the last forced token's text counts;
- at finish the text is ``tokenizer.decode(kept_ids)`` cut after the first stop string, so the
  concatenated deltas equal the report's text, and a character split across the last tokens is
  not lost (the detokenizer's held-back bytes are flushed by decoding the whole output once).
"""

from __future__ import annotations

from lil_sparse.engine.stop_checker import find_stop_end, stop_prefix_length
from lil_sparse.loading.detokenizer import IncrementalDetokenizer
from lil_sparse.loading.tokenizer import Tokenizer


class RequestOutput:
    def __init__(self, tokenizer: Tokenizer, stop_strings: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = stop_strings
        self.detokenizer = IncrementalDetokenizer(tokenizer, ())
        self.decoded = ""  # text of the output so far (complete characters), cut at a stop string
        self.text_ends: list[int] = []  # len(decoded) after each token
        self.logprobs: list[float] = []
        self.emitted = ""  # text sent to the client
        self.released = 0  # tokens sent to the client
        self.stopped = False  # a stop string ended the text
        self.stop_floor = 0  # a stop string must end after this offset of ``decoded`` (forced text)
        self._longest_stop = max((len(stop) for stop in stop_strings), default=0)

    def push(self, token: int, logprob: float, forced: bool = False) -> bool:
        """Decode one more token; True when it completed a stop string (the text then ends with it).

        A ``forced`` token (not sampled: an answer prompt's) never completes one; the stop strings
        are then searched only in text after it.
        """
        delta = "" if self.stopped else self.detokenizer.push((token,))
        if delta:
            new_from = max(len(self.decoded), self.stop_floor)
            self.decoded += delta
            if not forced and self.stop_strings:  # stop strings are searched only when a request has some
                end = find_stop_end(self.decoded, new_from, self.stop_strings)
                if end is not None:
                    self.decoded = self.decoded[:end]
                    self.stopped = True
        if forced:
            self.stop_floor = len(self.decoded)
        self.text_ends.append(len(self.decoded))
        self.logprobs.append(logprob)
        return self.stopped

    def push_and_release(self, token: int, logprob: float, upto: int) -> tuple[int, int, str]:
        """:meth:`push` of a sampled token then :meth:`release` up to ``upto`` tokens, for a
        request without stop strings (its text is never cut or held back). One call instead of
        two on the per-token path.

        Returns ``(first, upto, text)`` as :meth:`release` does (the logprobs are
        ``self.logprobs[first:upto]``). ValueError if the request has stop strings.
        """
        if self.stop_strings:
            raise ValueError("push_and_release: the request has stop strings; use push and release")
        delta = self.detokenizer.push((token,))
        if delta:
            self.decoded += delta
        self.text_ends.append(len(self.decoded))
        self.logprobs.append(logprob)
        first = self.released
        upto = max(first, min(upto, len(self.text_ends)))
        end = self.text_ends[upto - 1] if upto else 0
        emitted = len(self.emitted)
        text = self.decoded[emitted:end] if end > emitted else ""
        if text:
            self.emitted += text
        self.released = upto
        return first, upto, text

    @property
    def num_tokens(self) -> int:
        return len(self.text_ends)

    def release(self, upto: int) -> tuple[int, int, list[float], str]:
        """Release tokens ``released .. upto`` and the text that is final among them.

        Returns ``(first, upto, logprobs, text)``: the released token range, their logprobs and
        the text delta (without any suffix that may still grow into a stop string).
        """
        first = self.released
        upto = max(first, min(upto, len(self.text_ends)))
        end = self.text_ends[upto - 1] if upto else 0
        if self.stop_strings and (not self.stopped or end < len(self.decoded)):
            tail = self.decoded[max(0, end - self._longest_stop) : end]  # only a tail can start a stop
            end -= stop_prefix_length(tail, self.stop_strings)
        emitted = len(self.emitted)
        text = self.decoded[emitted:end] if end > emitted else ""
        if text:
            self.emitted += text
        self.released = upto
        return first, upto, self.logprobs[first:upto], text

    def finish(self, output_ids: list[int]) -> tuple[int, int, list[float], str, bool]:
        """Release everything of the final output ``output_ids`` (the first tokens pushed, all of
        them or a prefix when Guardian cut the output).

        Returns the :meth:`release` tuple plus whether a stop string ends the final text.
        """
        full = self.tokenizer.decode(output_ids)
        stopped = False
        if self.stop_strings:
            end = find_stop_end(full, self.stop_floor, self.stop_strings)
            if end is not None:
                full, stopped = full[:end], True
        if not full.startswith(self.emitted):
            # The detokenizer's deltas always form a prefix of the whole decode; keep what was
            # sent rather than contradict it if a tokenizer ever breaks that.
            full = self.emitted + self.detokenizer.flush()
        first = self.released
        upto = len(output_ids)
        text = full[len(self.emitted) :]
        self.emitted += text
        self.released = upto
        return first, upto, self.logprobs[first:upto], text, stopped
