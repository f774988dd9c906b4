"""``Tokenizer``: text <-> token ids and chat prompts, over a ``tokenizers`` (Rust) tokenizer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from lil_sparse.loading.chat_template import render_chat_segments, render_chat_template


class Tokenizer:
    """The model's tokenizer plus what generation needs: EOS ids, BOS id and the chat template.

    ``encode`` adds no special tokens by default: prompts come from the chat template, which
    writes any BOS itself. ``encode(text, parse_special=False)`` and ``encode_chat`` read
    control tokens a caller wrote (``<|im_start|>``) as plain text, so user text cannot forge
    a turn. ``decode`` drops special tokens by default, like vLLM, so a streamed
    answer never shows ``<|im_end|>``. ``vocab_size`` is the tokenizer's (with added tokens),
    which can be smaller than the model's embedding rows (Qwen pads those).
    """

    def __init__(
        self,
        backend: BackendTokenizer,
        chat_template: str | None,
        bos_token: str | None,
        eos_token: str | None,
        extra_eos_token_ids: Iterable[int] = (),
    ) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_token_id = None if bos_token is None else backend.token_to_id(bos_token)
        eos_ids = set(extra_eos_token_ids)
        eos_id = None if eos_token is None else backend.token_to_id(eos_token)
        if eos_id is not None:
            eos_ids.add(eos_id)
        self.eos_token_ids: frozenset[int] = frozenset(eos_ids)
        self.special_token_texts: tuple[str, ...] = tuple(
            added.content for added in backend.get_added_tokens_decoder().values() if added.special
        )
        self._plain_backend: BackendTokenizer | None = None  # built on first use
        self._plain_lock = threading.Lock()

    @staticmethod
    def from_folder(folder: str | Path, extra_eos_token_ids: Iterable[int] = ()) -> Tokenizer:
        """Read ``tokenizer.json`` and ``tokenizer_config.json`` (or ``chat_template.jinja``)."""
        folder = Path(folder)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ValueError(f"{folder}: no tokenizer.json (only fast tokenizers are supported)")
        config: dict[str, Any] = {}
        if (folder / "tokenizer_config.json").is_file():
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        chat_template = _pick_chat_template(config.get("chat_template"))
        if chat_template is None and (folder / "chat_template.jinja").is_file():
            chat_template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        return Tokenizer(
            BackendTokenizer.from_file(str(tokenizer_file)),
            chat_template=chat_template,
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            extra_eos_token_ids=extra_eos_token_ids,
        )

    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (with the chat template)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "add_bos_token": False,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": False,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``; ``parse_special=False`` reads control-token text as plain text.

        Other Python threads run while the backend tokenizes: its ``encode_batch`` releases the
        GIL and ``encode`` does not (tokenizers 0.23; the same ids). A server tokenizes on a
        thread pool so that its event loop keeps answering (health checks, other streams); with
        ``encode`` a 3 MB prompt held the GIL, and so the loop, for the whole 3 s it took (this
        project's 2-core CI machine, 2026-12-01; ``tests/server/test_input_guards.py``)."""
        if not parse_special and any(token in text for token in self.special_token_texts):
            backend = self._plain()
        else:
            backend = self.backend  # the same ids either way when no control token is written
        return list(backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids)

    def _plain(self) -> BackendTokenizer:
        # A copy that splits special tokens as text; a copy, because flipping the flag on the
        # shared backend would race with other threads tokenizing.
        with self._plain_lock:
            if self._plain_backend is None:
                plain = BackendTokenizer.from_str(self.backend.to_str())
                plain.encode_special_tokens = True
                self._plain_backend = plain
            return self._plain_backend

    def encode_chat(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        parse_special_in_content: bool = False,
    ) -> list[int]:
        """Prompt ids for ``messages``: the template's control tokens parsed, the contents as text.

        With ``parse_special_in_content`` control tokens in the contents are parsed too (the old
        behaviour, for callers that build turns themselves). Raises ValueError naming
        ``messages[i].content`` when a template that rewrites contents meets a control token.
        """
        special: dict[str, str | None] = {
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
        }
        template = self._template()
        rendered, segments = render_chat_segments(template, messages, add_generation_prompt, special)
        written = [
            (index, token)
            for index, message in enumerate(messages)
            for token in self.special_token_texts
            if token in message["content"]
        ]
        if parse_special_in_content or not written:
            return self.encode(rendered)
        if segments is None:
            index, token = written[0]
            raise ValueError(
                f"messages[{index}].content: contains the control token {token!r}, which this model's "
                "chat template does not let us keep as text; remove it or allow special tokens"
            )
        ids: list[int] = []
        for text, is_content in segments:
            if text:
                ids += self.encode(text, parse_special=not is_content)
        return ids

    def _template(self) -> str:
        if not self.chat_template:
            raise ValueError("this model has no chat template; send a raw prompt instead of chat messages")
        return self.chat_template

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages``; ValueError if the model has no chat template."""
        special: dict[str, str | None] = {
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
        }
        return render_chat_template(self._template(), messages, add_generation_prompt, special)


def _token_text(value: Any) -> str | None:
    # tokenizer_config.json spells special tokens either as a string or as an AddedToken dict.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _pick_chat_template(value: Any) -> str | None:
    # Some configs list several named templates; "default" is the one for plain chat.
    if isinstance(value, list):
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        return named.get("default") or next(iter(named.values()), None)
    return value if isinstance(value, str) else None
