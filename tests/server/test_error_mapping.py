"""The map_errors decorator: typed errors keep their code and text, bugs become a bare INTERNAL."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from server.errors import InvalidArgument, OutOfRange, QueueFull, ShuttingDown, map_errors


class _Aborted(Exception):
    pass


class _Context:
    """Records the abort like grpc.aio does (abort raises to end the handler)."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise _Aborted


class _Servicer:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    @map_errors
    async def Unary(self, request: Any, context: Any) -> str:
        raise self.error

    @map_errors
    async def Stream(self, request: Any, context: Any) -> Any:
        yield "first"
        raise self.error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("top_p: bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (OutOfRange("max_new_tokens: too long"), grpc.StatusCode.OUT_OF_RANGE),
        (QueueFull("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ShuttingDown("server is shutting down"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_service_errors_keep_code_and_message(error: Exception, code: grpc.StatusCode) -> None:
    context = _Context()
    with pytest.raises(_Aborted):
        asyncio.run(_Servicer(error).Unary(None, context))
    assert (context.code, context.details) == (code, str(error))


def test_unexpected_error_is_internal_without_details() -> None:
    context = _Context()

    async def consume() -> list[str]:
        return [item async for item in _Servicer(KeyError("/secret/path")).Stream(None, context)]

    with pytest.raises(_Aborted):
        asyncio.run(consume())
    assert context.code == grpc.StatusCode.INTERNAL
    assert "secret" not in context.details
    assert context.details.startswith("internal error (id ")
