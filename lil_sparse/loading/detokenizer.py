"""``IncrementalDetokenizer``: turn a stream of generated token ids into a stream of text deltas."""

from __future__ import annotations

from collections.abc import Sequence

from lil_sparse.loading.tokenizer import Tokenizer

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Decode generated tokens a few at a time, emitting only text that is final.

    Decoding a window of recent tokens and diffing it against the same window without the new
    tokens (the vLLM scheme) costs O(window) per step instead of re-decoding everything. A delta
    that ends in U+FFFD is held back: the token split a multi-byte UTF-8 character and the next
    token completes it. :meth:`flush` returns whatever is still held at the end.

    The concatenation of all deltas plus ``flush()`` equals ``tokenizer.decode(output_ids)``.
    That is why the window starts at the first output token and never reaches into the prompt:
    prompt bytes would merge with a split character at the boundary, and a SentencePiece answer's
    first space would differ from what ``decode`` gives. ``prompt_ids`` is accepted (vLLM's
    signature) but only its length is kept, for callers that want it.
    """

    def __init__(
        self, tokenizer: Tokenizer, prompt_ids: Sequence[int], skip_special_tokens: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.prompt_length = len(prompt_ids)
        self._ids: list[int] = []  # the decode window: output tokens from _prefix_offset on
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = 0  # tokens before this are already emitted as text
        self.text = ""  # all text emitted so far

    def push(self, token_ids: Sequence[int]) -> str:
        """Add generated tokens; return the new text they complete (possibly "")."""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith(_REPLACEMENT):
            return ""
        delta = full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        # Keep the window short: everything before the prefix offset is emitted and no longer needed.
        self._ids = self._ids[self._prefix_offset :]
        self._read_offset -= self._prefix_offset
        self._prefix_offset = 0
        self.text += delta
        return delta

    def flush(self) -> str:
        """Text still held back at the end of generation (an incomplete character decodes as U+FFFD)."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        delta = full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        self.text += delta
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)
