"""``IncrementalDetokenizer``: turn a stream of generated token ids into a stream of text deltas."""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from lil_sparse.loading.tokenizer import Tokenizer

_REPLACEMENT = "\ufffd"
# Per tokenizer and ``skip_special_tokens``: ids (zero or one) -> ``decode(ids)``. ``decode`` is a pure
# function of its ids, so a cached text is the text a call would return. Bounded by the vocabulary.
_SINGLE_TOKEN_TEXT: weakref.WeakKeyDictionary[Tokenizer, dict[tuple[tuple[int, ...], bool], str]] = (
    weakref.WeakKeyDictionary()
)


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

    Cost: one ``tokenizer.decode`` per pushed token in the steady state. The prefix text is
    reused while tokens are held back (the prefix window does not change), and a one-token prefix
    window (the usual case after an emit) is looked up in a per-tokenizer cache of single-token
    texts. The deltas are those of decoding both windows every push (the same calls, memoized).
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
        self._prefix_text: str | None = None  # decode of _ids[_prefix_offset:_read_offset]
        self._single = _SINGLE_TOKEN_TEXT.setdefault(tokenizer, {})

    def push(self, token_ids: Sequence[int]) -> str:
        """Add generated tokens; return the new text they complete (possibly "")."""
        self._ids.extend(token_ids)
        prefix_text = self._prefix_text
        if prefix_text is None:
            prefix_text = self._window_prefix_text()
        ids = self._ids[self._prefix_offset :] if self._prefix_offset else self._ids  # decode copies
        full_text = self.tokenizer.decode(ids, self.skip_special_tokens)
        if len(full_text) <= len(prefix_text) or full_text.endswith(_REPLACEMENT):
            return ""
        delta = full_text[len(prefix_text) :]
        # The new window starts at the old read offset (everything before it is emitted and no
        # longer needed) and its read offset is the end of the tokens so far.
        read = self._read_offset
        self._ids = self._ids[read:]
        self._read_offset = len(self._ids)
        self._prefix_offset = 0
        self._prefix_text = None
        self.text += delta
        return delta

    def flush(self) -> str:
        """Text still held back at the end of generation (an incomplete character decodes as U+FFFD)."""
        prefix_text = self._window_prefix_text()
        full_text = self._decode(self._ids[self._prefix_offset :])
        delta = full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        self._prefix_text = None
        self.text += delta
        return delta

    def _window_prefix_text(self) -> str:
        """``decode(_ids[_prefix_offset:_read_offset])``, memoized while the window is unchanged."""
        if self._prefix_text is None:
            window = self._ids[self._prefix_offset : self._read_offset]
            if len(window) <= 1:
                key = (tuple(window), self.skip_special_tokens)
                text = self._single.get(key)
                if text is None:
                    text = self._single[key] = self._decode(window)
                self._prefix_text = text
            else:
                self._prefix_text = self._decode(window)
        return self._prefix_text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)
