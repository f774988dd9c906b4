"""Build a GenerateRequest from plain Python values; ``None`` leaves a field to the server default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lil_client._proto.lil_sparse.v1 import options_pb2, service_pb2

POLICIES = ("full", "sink", "h2o", "quest", "infllm")
GUARDIAN_MODES = ("full", "incremental")
GUARDIAN_SOURCES = ("text", "token_ids")
GUARDIAN_ACTIONS = ("truncate", "answer")


@dataclass(frozen=True, slots=True)
class GenerateOptions:
    """Per-call options. The server validates values and names the field in its error."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool | None = None
    policy: str | None = None
    budget_tokens: int | None = None
    sink_tokens: int | None = None
    recent_tokens: int | None = None
    dense_layers: int | None = None
    guardian: bool | None = None
    guardian_interval_tokens: int | None = None
    guardian_threshold_bytes: int | None = None
    guardian_mode: str | None = None
    guardian_source: str | None = None
    guardian_shadow: bool | None = None  # record where Guardian would stop, without stopping
    guardian_action: str | None = None  # what a stop does: "truncate" or "answer"
    guardian_answer_max_tokens: int | None = None  # "answer": the model's tokens after the prompt
    return_token_ids: bool = False
    return_logprobs: bool = False
    return_guardian_trace: bool = False
    request_id: str | None = None
    # Parse control tokens such as "<|im_start|>" written in the prompt (default: plain text).
    allow_special_tokens: bool | None = None

    def __post_init__(self) -> None:
        # Enum names are checked here because protobuf has no value for a misspelled name.
        if self.policy is not None and self.policy not in POLICIES:
            raise ValueError(f"policy: unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.guardian_mode is not None and self.guardian_mode not in GUARDIAN_MODES:
            raise ValueError(f"guardian_mode: must be one of {', '.join(GUARDIAN_MODES)}")
        if self.guardian_source is not None and self.guardian_source not in GUARDIAN_SOURCES:
            raise ValueError(f"guardian_source: must be one of {', '.join(GUARDIAN_SOURCES)}")
        if self.guardian_action is not None and self.guardian_action not in GUARDIAN_ACTIONS:
            raise ValueError(f"guardian_action: must be one of {', '.join(GUARDIAN_ACTIONS)}")


def _set_present(message: object, **values: object) -> None:
    for name, value in values.items():
        if value is not None:
            setattr(message, name, value)


def build_request(
    prompt: str | None = None,
    *,
    messages: Sequence[Mapping[str, str]] | None = None,
    token_ids: Sequence[int] | None = None,
    options: GenerateOptions | None = None,
) -> service_pb2.GenerateRequest:
    """Exactly one of ``prompt`` (plain text), ``messages`` (chat) or ``token_ids`` is required."""
    given = [
        name
        for name, value in (("prompt", prompt), ("messages", messages), ("token_ids", token_ids))
        if value is not None
    ]
    if len(given) != 1:
        raise ValueError(f"input: pass exactly one of prompt, messages, token_ids (got {given or 'none'})")
    o = options or GenerateOptions()
    request = service_pb2.GenerateRequest()
    if prompt is not None:
        request.text = prompt
    elif messages is not None:
        request.chat.messages.extend(
            service_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages
        )
        request.chat.SetInParent()  # an empty list still selects the chat input
    else:
        request.token_ids.ids.extend(token_ids or ())
        request.token_ids.SetInParent()
    if o.request_id is not None:
        request.request_id = o.request_id
    if o.allow_special_tokens is not None:
        request.allow_special_tokens = o.allow_special_tokens
    _set_present(request.sampling, temperature=o.temperature, top_k=o.top_k, top_p=o.top_p, seed=o.seed)
    _set_present(request.stopping, max_new_tokens=o.max_new_tokens, ignore_eos=o.ignore_eos)
    request.stopping.stop_strings.extend(o.stop)
    _set_present(
        request.sparse,
        budget_tokens=o.budget_tokens,
        sink_tokens=o.sink_tokens,
        recent_tokens=o.recent_tokens,
        dense_layers=o.dense_layers,
    )
    if o.policy is not None:
        request.sparse.policy = options_pb2.Policy.Value(f"POLICY_{o.policy.upper()}")
    _set_present(
        request.guardian,
        enabled=o.guardian,
        interval_tokens=o.guardian_interval_tokens,
        threshold_bytes=o.guardian_threshold_bytes,
        shadow=o.guardian_shadow,
        answer_max_tokens=o.guardian_answer_max_tokens,
    )
    if o.guardian_action is not None:
        request.guardian.action = options_pb2.GuardianAction.Value(
            f"GUARDIAN_ACTION_{o.guardian_action.upper()}"
        )
    if o.guardian_mode is not None:
        request.guardian.mode = options_pb2.GuardianMode.Value(f"GUARDIAN_MODE_{o.guardian_mode.upper()}")
    if o.guardian_source is not None:
        request.guardian.source = options_pb2.GuardianSource.Value(
            f"GUARDIAN_SOURCE_{o.guardian_source.upper()}"
        )
    request.output.return_token_ids = o.return_token_ids
    request.output.return_logprobs = o.return_logprobs
    request.output.return_guardian_trace = o.return_guardian_trace
    return request
