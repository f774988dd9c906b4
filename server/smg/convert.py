"""Conversion between SMG's SGLang scheduler messages and the engine's types.

The only module of ``server.smg`` that builds or reads ``sglang_scheduler_pb2`` messages (the
published ``smg-grpc-proto`` stubs). Requests become validated :class:`RequestOptions` plus
prompt token ids; engine events and reports become stream messages. Invalid input raises
:class:`InvalidArgument` naming the field, which the shared error mapping turns into
``INVALID_ARGUMENT``.

Per-call lil-sparse options ride in ``SamplingParams.custom_params`` (a ``google.protobuf.Struct``,
SGLang's per-request extension point)::

    {"sparse": {"policy": "quest", "budget_tokens": 128},
     "guardian": {"enabled": true, "interval_tokens": 100},
     "seed": 7}

Keys inside ``sparse`` and ``guardian`` are the fields of :class:`SparseOptions` and
:class:`GuardianOptions`; anything unset keeps the server default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from typing import Any, Protocol

from google.protobuf.struct_pb2 import ListValue, Struct
from smg_grpc_proto.generated import sglang_scheduler_pb2 as sglang

from lil_sparse.events import FinishReason, RequestReport
from lil_sparse.options import GuardianOptions, RequestOptions, SamplingOptions, SparseOptions
from server.errors import InvalidArgument

# SGLang's finish reasons are OpenAI's strings; Guardian's early stop is a stop by the engine.
FINISH_REASON_TO_SGLANG: dict[FinishReason, str] = {
    FinishReason.LENGTH: "length",
    FinishReason.EOS: "stop",
    FinishReason.STOP_STRING: "stop",
    FinishReason.EARLY_STOP: "stop",
    FinishReason.ABORTED: "abort",
}
_CUSTOM_GROUPS: dict[str, type] = {"sparse": SparseOptions, "guardian": GuardianOptions}
_CUSTOM_KEYS = (*_CUSTOM_GROUPS, "seed")


class StopTokenText(Protocol):
    """What the conversion needs from the tokenizer: EOS ids and single-token text."""

    eos_token_ids: frozenset[int]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


def _integral(value: Any, name: str) -> int:
    """Struct numbers arrive as floats; integer fields must hold whole numbers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidArgument(f"{name}: must be a whole number, got {value!r}")


def _typed(value: Any, annotation: str, name: str) -> Any:
    """Check one option against its field's annotation (a string: ``int``, ``bool``, ``str``...)."""
    if annotation == "int":
        return _integral(value, name)
    if annotation == "bool" and not isinstance(value, bool):
        raise InvalidArgument(f"{name}: must be true or false, got {value!r}")
    if annotation not in ("int", "bool") and not isinstance(value, str):  # names: policy, mode, source
        raise InvalidArgument(f"{name}: must be a string, got {value!r}")
    return value


def _group_overrides(group: str, raw: Any) -> dict[str, Any]:
    """One ``custom_params`` group as dataclass keyword arguments; unknown keys are refused."""
    name = f"custom_params.{group}"
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{name}: must be an object")
    cls = _CUSTOM_GROUPS[group]
    known = {f.name: str(f.type) for f in fields(cls)}
    overrides: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise InvalidArgument(f"{name}.{key}: unknown option; expected one of {', '.join(known)}")
        overrides[key] = _typed(value, known[key], f"{name}.{key}")
    return overrides


def _plain(value: Any) -> Any:
    """A ``Struct``'s values as Python ones (numbers as floats, NaN and infinities kept, so the
    field's own check refuses them by name; ``MessageToDict`` raised on them: INTERNAL)."""
    if isinstance(value, Struct):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, ListValue):
        return [_plain(item) for item in value]
    return value


def custom_overrides(custom_params: Mapping[str, Any]) -> dict[str, Any]:
    """``custom_params`` -> {"sparse": {...}, "guardian": {...}, "seed": int}; InvalidArgument if bad."""
    unknown = sorted(set(custom_params) - set(_CUSTOM_KEYS))
    if unknown:
        raise InvalidArgument(
            f"custom_params.{unknown[0]}: unknown key; lil-sparse reads {', '.join(_CUSTOM_KEYS)}"
        )
    result: dict[str, Any] = {
        group: _group_overrides(group, custom_params[group])
        for group in _CUSTOM_GROUPS
        if group in custom_params
    }
    if "seed" in custom_params:
        result["seed"] = _integral(custom_params["seed"], "custom_params.seed")
    return result


def _shown(value: float) -> str:
    """A proto float32 as the user wrote it: ``0.1``, not ``0.10000000149011612`` (``:g``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _refuse_unsupported(params: sglang.SamplingParams, request: sglang.GenerateRequest) -> None:
    """Fields lil-sparse cannot honour fail loudly instead of being ignored."""
    neutral = {
        "min_p": (params.min_p, 0.0),
        "frequency_penalty": (params.frequency_penalty, 0.0),
        "presence_penalty": (params.presence_penalty, 0.0),
        "min_new_tokens": (params.min_new_tokens, 0),
        "top_logprobs_num": (request.top_logprobs_num, 0),
    }
    for name, (value, expected) in neutral.items():
        if value != expected:
            raise InvalidArgument(f"{name}: not supported by lil-sparse (got {_shown(value)})")
    if params.repetition_penalty not in (0.0, 1.0):
        raise InvalidArgument(
            f"repetition_penalty: not supported by lil-sparse (got {_shown(params.repetition_penalty)})"
        )
    if params.n > 1:
        raise InvalidArgument(f"n: lil-sparse returns one sample per request (got {params.n})")
    if params.WhichOneof("constraint") is not None:
        raise InvalidArgument(f"{params.WhichOneof('constraint')}: structured generation is not supported")
    if params.logit_bias:
        raise InvalidArgument("logit_bias: not supported by lil-sparse")
    if request.HasField("mm_inputs") or request.input_embeds:
        raise InvalidArgument("mm_inputs: lil-sparse serves text-only models")
    if request.lora_id:
        raise InvalidArgument("lora_id: lil-sparse serves no LoRA adapters")


def _stop_strings(params: sglang.SamplingParams, tokenizer: StopTokenText) -> tuple[str, ...]:
    """Stop strings plus the text of each non-EOS stop token id (EOS already stops)."""
    stops = list(params.stop)
    for token_id in params.stop_token_ids:
        if token_id in tokenizer.eos_token_ids:
            continue
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        if not text:
            raise InvalidArgument(f"stop_token_ids: token {token_id} has no text to match")
        stops.append(text)
    return tuple(dict.fromkeys(stops))


def options_from_request(
    request: sglang.GenerateRequest, defaults: RequestOptions, tokenizer: StopTokenText
) -> RequestOptions:
    """Overlay the request on ``defaults``; raises InvalidArgument naming the field.

    ``temperature``, ``top_p`` and ``top_k`` always arrive (proto3 scalars; the gateway fills
    OpenAI's defaults, or the worker's ``default_sampling_params_json``); ``top_k <= 0`` is off.
    """
    params = request.sampling_params
    _refuse_unsupported(params, request)
    custom = custom_overrides(_plain(params.custom_params)) if params.HasField("custom_params") else {}
    stopping_fields: dict[str, Any] = {"ignore_eos": params.ignore_eos}
    if params.HasField("max_new_tokens"):
        stopping_fields["max_new_tokens"] = params.max_new_tokens
    stops = _stop_strings(params, tokenizer)
    if stops:
        stopping_fields["stop_strings"] = stops
    try:
        sampling = SamplingOptions(
            temperature=params.temperature,
            top_k=max(params.top_k, 0),
            top_p=params.top_p if params.top_p > 0 else 1.0,
            seed=custom.get("seed", defaults.sampling.seed),
        )
        return RequestOptions(
            sampling=sampling,
            stopping=replace(defaults.stopping, **stopping_fields),
            sparse=replace(defaults.sparse, **custom.get("sparse", {})),
            guardian=replace(defaults.guardian, **custom.get("guardian", {})),
        )
    except (ValueError, TypeError) as error:  # the option dataclasses name the field
        raise InvalidArgument(str(error)) from None


def prompt_token_ids(request: sglang.GenerateRequest) -> list[int]:
    """The gateway tokenizes; the worker takes ``tokenized.input_ids`` as they are."""
    ids = list(request.tokenized.input_ids)
    if not ids:
        raise InvalidArgument("tokenized.input_ids: the prompt is empty")
    return ids


def _logprobs(token_ids: Sequence[int], logprobs: Sequence[float]) -> sglang.OutputLogProbs:
    return sglang.OutputLogProbs(token_logprobs=list(logprobs), token_ids=list(token_ids))


def chunk_response(
    request_id: str,
    token_ids: Sequence[int],
    logprobs: Sequence[float],
    prompt_tokens: int,
    completion_tokens: int,
    return_logprob: bool,
) -> sglang.GenerateResponse:
    """One streamed chunk: the new tokens, cumulative counts."""
    chunk = sglang.GenerateStreamChunk(
        token_ids=list(token_ids), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )
    if return_logprob:
        chunk.output_logprobs.CopyFrom(_logprobs(token_ids, logprobs))
    return sglang.GenerateResponse(request_id=request_id, chunk=chunk)


def complete_response(
    request_id: str, report: RequestReport, logprobs: Sequence[float], return_logprob: bool
) -> sglang.GenerateResponse:
    """The final message: every output id, the OpenAI finish reason and usage."""
    complete = sglang.GenerateComplete(
        output_ids=report.output_token_ids,
        finish_reason=FINISH_REASON_TO_SGLANG[report.finish_reason],
        prompt_tokens=report.prompt_tokens,
        completion_tokens=report.completion_tokens,
    )
    if report.finish_reason is FinishReason.EOS and report.output_token_ids:
        complete.matched_token_id = report.output_token_ids[-1]
    if return_logprob:
        complete.output_logprobs.CopyFrom(_logprobs(report.output_token_ids, logprobs))
    return sglang.GenerateResponse(request_id=request_id, complete=complete)
