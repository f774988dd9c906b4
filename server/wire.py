"""Registers the servicer with request parsing that never raises inside grpc.

grpc's generated registration parses each body with ``FromString``; a body that is not a valid
message (garbage, a truncated field, invalid UTF-8 in a string field) then raises inside grpc
and the call ends UNKNOWN with Python's exception text. Here a body that does not parse becomes
an :class:`UndecodableRequest`, which the servicer answers with INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from lil_client._proto.lil_sparse.v1 import service_pb2


@dataclass(frozen=True, slots=True)
class UndecodableRequest:
    """A request body that is not a valid ``message_name``; ``reason`` is the parser's message."""

    message_name: str
    reason: str


def lenient(message_class: Any) -> Callable[[bytes], Any]:
    """A deserializer returning the parsed message, or an UndecodableRequest instead of raising."""

    def deserialize(body: bytes) -> Any:
        try:
            return message_class.FromString(body)
        except (DecodeError, UnicodeDecodeError, ValueError) as error:
            return UndecodableRequest(message_class.DESCRIPTOR.full_name, str(error) or type(error).__name__)

    return deserialize


def add_servicer(servicer: Any, server: grpc.aio.Server, service_name: str) -> None:
    """Register Generate and GetInfo of ``servicer`` under ``service_name``."""
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate,
            request_deserializer=lenient(service_pb2.GenerateRequest),
            response_serializer=service_pb2.GenerateResponse.SerializeToString,
        ),
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetInfo,
            request_deserializer=lenient(service_pb2.GetInfoRequest),
            response_serializer=service_pb2.GetInfoResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
