"""Render a model's Jinja2 chat template the way transformers does.

Same environment as ``transformers``' ``apply_chat_template``: sandboxed, ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter that keeps non-ASCII text,
and the ``raise_exception`` / ``strftime_now`` globals templates call.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format_string: str) -> str:
    return datetime.now().strftime(format_string)


@lru_cache(maxsize=16)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile once per template text (templates are reused for every request)."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment.from_string(template)


def render_chat_template(
    template: str,
    messages: list[dict[str, str]],
    add_generation_prompt: bool,
    special_tokens: dict[str, str | None],
) -> str:
    """Render ``messages`` (each ``{"role": ..., "content": ...}``) to the prompt text.

    ``special_tokens`` supplies ``bos_token``/``eos_token`` and the like, which templates refer to.
    Raises ValueError when a message is malformed or the template rejects the conversation.
    """
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"messages[{index}]: expected a dict with 'role' and 'content', got {message!r}")
    try:
        return compile_chat_template(template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            **special_tokens,
        )
    except jinja2.exceptions.TemplateError as error:
        raise ValueError(f"chat template: {error}") from error


# Stands in for a message's content while rendering, to find where each content lands. Private-use
# code points, so no template or real text writes them.
_CONTENT_MARK = "\ue000lil-content-{}\ue001"
_CONTENT_MARK_PATTERN = re.compile("\ue000lil-content-(\\d+)\ue001")


def render_chat_segments(
    template: str,
    messages: list[dict[str, str]],
    add_generation_prompt: bool,
    special_tokens: dict[str, str | None],
) -> tuple[str, list[tuple[str, bool]] | None]:
    """The rendered prompt and its split into ``(text, is_message_content)`` segments.

    The segments concatenate to the prompt, so a tokenizer can parse control tokens in the
    template's own text while treating what the caller wrote as plain text. The split is None
    when the template rewrites contents (e.g. trims them) so they cannot be located exactly.
    """
    rendered = render_chat_template(template, messages, add_generation_prompt, special_tokens)
    marked = [{**message, "content": _CONTENT_MARK.format(i)} for i, message in enumerate(messages)]
    pieces = _CONTENT_MARK_PATTERN.split(
        render_chat_template(template, marked, add_generation_prompt, special_tokens)
    )
    # re.split with one group alternates template text and the captured message index.
    segments = [
        (messages[int(piece)]["content"], True) if index % 2 else (piece, False)
        for index, piece in enumerate(pieces)
    ]
    if "".join(text for text, _ in segments) != rendered:
        return rendered, None
    return rendered, segments
