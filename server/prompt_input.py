"""The prompt of a GenerateRequest: size checks before tokenizing, tokenizing, context checks.

With ``server/convert.py`` the only server code touching ``*_pb2``. Invalid input raises
:class:`InvalidArgument` (or :class:`OutOfRange` for the context) naming the proto field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lil_client._proto.lil_sparse.v1 import service_pb2

from server.errors import InvalidArgument, OutOfRange

CHAT_ROLES = ("system", "user", "assistant")
# The field each input kind is named by in messages (the oneof member, or the chat's list).
PROMPT_FIELD = {"text": "text", "chat": "messages", "token_ids": "token_ids"}


@dataclass(frozen=True, slots=True)
class PromptLimits:
    """What the server accepts before tokenizing: sizes in UTF-8 bytes and tokens."""

    max_prompt_bytes: int
    max_new_tokens_limit: int
    max_context: int
    vocab_size: int


class PromptTokenizer(Protocol):
    def encode(
        self, text: str, add_special_tokens: bool = False, parse_special: bool = True
    ) -> list[int]: ...

    def encode_chat(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        parse_special_in_content: bool = False,
    ) -> list[int]: ...


def check_prompt_size(request: service_pb2.GenerateRequest, limits: PromptLimits) -> None:
    """Refuse what needs no tokenizer to refuse: no input, oversize text, bad roles and ids.

    Runs on the event loop before tokenizing, so it only measures lengths.
    """
    kind = request.WhichOneof("input")
    if kind is None:
        raise InvalidArgument("input: set one of text, chat or token_ids")
    if kind == "token_ids":
        ids = request.token_ids.ids
        if len(ids) >= limits.max_context:
            raise OutOfRange(
                f"token_ids: the prompt ({len(ids)} tokens) alone fills the model context of "
                f"{limits.max_context} tokens"
            )
        for position, token in enumerate(ids):
            if not 0 <= token < limits.vocab_size:
                raise InvalidArgument(
                    f"token_ids: id {token} at position {position} is outside the vocabulary "
                    f"[0, {limits.vocab_size})"
                )
        return
    if kind == "text":
        size = len(request.text.encode("utf-8"))
    else:
        for index, message in enumerate(request.chat.messages):
            if message.role not in CHAT_ROLES:
                raise InvalidArgument(
                    f"messages[{index}].role: must be one of {', '.join(CHAT_ROLES)}, got {message.role!r}"
                )
        messages = request.chat.messages
        size = sum(len(m.role.encode("utf-8")) + len(m.content.encode("utf-8")) for m in messages)
    if size > limits.max_prompt_bytes:
        raise InvalidArgument(
            f"{PROMPT_FIELD[kind]}: the prompt is {size} bytes, more than the server's "
            f"max_prompt_bytes ({limits.max_prompt_bytes})"
        )


def prompt_token_ids(request: service_pb2.GenerateRequest, tokenizer: PromptTokenizer) -> list[int]:
    """Tokenize the request's input (text, chat messages or token ids) into prompt token ids.

    Control tokens written in text or message contents are read as plain text unless the request
    sets ``allow_special_tokens``. Slow for long prompts: call it off the event loop.
    """
    kind = request.WhichOneof("input")
    allow_special = request.allow_special_tokens
    if kind == "text":
        ids = list(tokenizer.encode(request.text, parse_special=allow_special))
    elif kind == "chat":
        messages = [{"role": m.role, "content": m.content} for m in request.chat.messages]
        if not messages:
            raise InvalidArgument("messages: at least one message is required")
        try:
            ids = list(tokenizer.encode_chat(messages, parse_special_in_content=allow_special))
        except ValueError as error:  # the template refused the conversation, or a forged turn
            text = str(error)
            raise InvalidArgument(text if text.startswith("messages") else f"messages: {text}") from None
    elif kind == "token_ids":
        ids = list(request.token_ids.ids)
    else:
        raise InvalidArgument("input: set one of text, chat or token_ids")
    if not ids:
        raise InvalidArgument(f"{PROMPT_FIELD[kind]}: the prompt is empty")
    return ids


def check_prompt_fits(
    request: service_pb2.GenerateRequest, prompt_tokens: int, max_new_tokens: int, max_context: int
) -> None:
    """OUT_OF_RANGE naming the prompt when it alone fills the context, else max_new_tokens."""
    field_name = PROMPT_FIELD[request.WhichOneof("input") or "text"]
    if prompt_tokens >= max_context:
        raise OutOfRange(
            f"{field_name}: the prompt ({prompt_tokens} tokens) alone fills the model context of "
            f"{max_context} tokens"
        )
    if prompt_tokens + max_new_tokens > max_context:
        raise OutOfRange(
            f"max_new_tokens: the prompt ({prompt_tokens} tokens) plus max_new_tokens ({max_new_tokens}) "
            f"exceeds the model context of {max_context} tokens; at most {max_context - prompt_tokens} fit"
        )
