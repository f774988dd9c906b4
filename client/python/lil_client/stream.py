"""Turns the Generate message stream into typed chunks and a final Summary (sync and asyncio)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from lil_client._proto.lil_sparse.v1 import service_pb2
from lil_client.types import Chunk, LilClientError, Summary, chunk_from_proto, summary_from_proto


class _Assembler:
    """Checks the Started -> Chunk* -> Finished order and collects what the Summary needs."""

    def __init__(self) -> None:
        self.started: service_pb2.Started | None = None
        self.chunks: list[Chunk] = []
        self.summary: Summary | None = None
        # How the stream ended, so ``result`` names it: the call's error, a local cancel, the end.
        self.error: LilClientError | None = None
        self.cancelled = False
        self.ended = False

    def feed(self, response: service_pb2.GenerateResponse) -> Chunk | None:
        kind = response.WhichOneof("event")
        if self.summary is not None or (kind != "started") == (self.started is None):
            self.error = LilClientError(
                grpc.StatusCode.INTERNAL, f"unexpected {kind!r} message in the stream"
            )
            raise self.error
        if kind == "started":
            self.started = response.started
            return None
        if kind == "chunk":
            chunk = chunk_from_proto(response.chunk)
            self.chunks.append(chunk)
            return chunk
        started = self.started
        if started is None:  # unreachable after the order check; narrows the type
            raise LilClientError(grpc.StatusCode.INTERNAL, "finished before started")
        self.summary = summary_from_proto(started, response.finished, self.chunks)
        return None

    def result(self) -> Summary:
        """The Summary, else the reason there is none: a failed or cancelled call never reads
        as a server fault (INTERNAL is left for a stream that really ended without one)."""
        if self.summary is not None:
            return self.summary
        if self.error is not None:
            raise self.error
        if self.cancelled:
            raise LilClientError(grpc.StatusCode.CANCELLED, "the stream was cancelled before it finished")
        if not self.ended:
            raise LilClientError(
                grpc.StatusCode.FAILED_PRECONDITION, "the summary is set once the stream is read to its end"
            )
        raise LilClientError(grpc.StatusCode.INTERNAL, "the stream ended without a finished message")


NOT_GRPC_HINT = (
    " (the address answered, but not in gRPC: is it an HTTP port, such as the server's Prometheus"
    " port, 9400 by default? The gRPC port is 50051 by default)"
)


def to_client_error(error: grpc.RpcError) -> LilClientError:
    """The call's status code and details, with a hint when the address speaks HTTP/1.x rather
    than gRPC (grpc reports "Failed parsing HTTP/2" or "http1.x server")."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    if code == grpc.StatusCode.UNAVAILABLE and ("Failed parsing HTTP/2" in details or "http1.x" in details):
        details += NOT_GRPC_HINT
    return LilClientError(code, details)


class _StreamCall:
    """What both streams share: the gRPC call, the chunk assembler, and the request id, summary
    and cancel that read or stop them."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._assembler = _Assembler()

    @property
    def request_id(self) -> str | None:
        return self._assembler.started.request_id if self._assembler.started else None

    @property
    def summary(self) -> Summary:
        return self._assembler.result()

    def cancel(self) -> None:
        self._assembler.cancelled = True
        self._call.cancel()


class GenerationStream(_StreamCall):
    """Iterate for chunks; ``summary`` is set once the iteration ends. ``cancel()`` stops it."""

    def __iter__(self) -> Iterator[Chunk]:
        try:
            for response in self._call:
                chunk = self._assembler.feed(response)
                if chunk is not None:
                    yield chunk
        except grpc.RpcError as error:
            self._assembler.error = to_client_error(error)
            raise self._assembler.error from None
        self._assembler.ended = True


class AsyncGenerationStream(_StreamCall):
    """``async for`` chunks; ``summary`` is set once the iteration ends. ``cancel()`` stops it."""

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        try:
            async for response in self._call:
                chunk = self._assembler.feed(response)
                if chunk is not None:
                    yield chunk
        except grpc.RpcError as error:
            self._assembler.error = to_client_error(error)
            raise self._assembler.error from None
        self._assembler.ended = True

    async def collect(self) -> Summary:
        """Read the whole stream and return the summary."""
        async for _ in self:
            pass
        return self.summary
