"""``Tokenizer``: text <-> token ids and chat prompts, over a ``tokenizers`` (Rust) tokenizer."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from lil_sparse.loading.chat_template import render_chat_template


class Tokenizer:
    """The model's tokenizer plus what generation needs: EOS ids, BOS id and the chat template.

    ``encode`` adds no special tokens by default: prompts come from the chat template, which
    writes any BOS itself. ``decode`` drops special tokens by default, like vLLM, so a streamed
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

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages``; ValueError if the model has no chat template."""
        if not self.chat_template:
            raise ValueError("this model has no chat template; send a raw prompt instead of chat messages")
        special: dict[str, str | None] = {
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
        }
        return render_chat_template(self.chat_template, messages, add_generation_prompt, special)


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
