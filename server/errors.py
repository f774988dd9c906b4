"""Service errors and the one decorator that maps exceptions to gRPC status codes.

Code inside the servicer raises the typed errors below; everything else is a bug and becomes
``INTERNAL`` with an error id that appears in the server log, never the exception text.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error the caller caused or can act on; its message is sent as the status details."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(ServiceError):
    """A bad option or input; the message starts with the field name."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class OutOfRange(ServiceError):
    """The prompt plus ``max_new_tokens`` does not fit the model's context."""

    code = grpc.StatusCode.OUT_OF_RANGE


class QueueFull(ServiceError):
    """Running plus waiting requests are at the configured limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ShuttingDown(ServiceError):
    """The server is draining and takes no new calls."""

    code = grpc.StatusCode.UNAVAILABLE


class EngineFailed(ServiceError):
    """The engine raised while running the request; details are only in the server log."""

    code = grpc.StatusCode.INTERNAL


_Method = TypeVar("_Method", bound=Callable[..., Any])


async def _abort_for(error: BaseException, context: grpc.aio.ServicerContext) -> None:
    if isinstance(error, ServiceError):
        await context.abort(error.code, str(error))
    error_id = uuid.uuid4().hex[:12]
    logger.error("internal error %s", error_id, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (id {error_id}; see the server log)")


def map_errors(method: _Method) -> _Method:
    """Wrap a unary or server-streaming servicer method so exceptions become status codes.

    Cancellation (client cancel, deadline) and ``context.abort`` pass through untouched: grpc
    already knows the status of those calls.
    """
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(
            self: Any, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                async for response in method(self, request, context):
                    yield response
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as error:
                await _abort_for(error, context)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await _abort_for(error, context)

    return unary_wrapper  # type: ignore[return-value]
