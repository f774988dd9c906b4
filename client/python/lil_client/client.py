"""Sync and asyncio clients for the lil-sparse sidecar.

with LilClient("localhost:50051") as client:
    stream = client.generate("Hello", policy="quest", budget_tokens=128, guardian=True)
    for chunk in stream:
        print(chunk.text, end="", flush=True)
    print(stream.summary.finish_reason)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from lil_client._proto.lil_sparse.v1 import service_pb2, service_pb2_grpc
from lil_client.connection import Connection
from lil_client.request import GenerateOptions, build_request
from lil_client.stream import AsyncGenerationStream, GenerationStream, to_client_error
from lil_client.types import Summary


class LilClient:
    """Blocking client. ``generate`` returns a stream to iterate; ``complete`` waits for the end.

    ``connection`` chooses TLS, mTLS and a bearer token (default: plaintext, no token).
    """

    def __init__(
        self, address: str, channel: grpc.Channel | None = None, connection: Connection | None = None
    ) -> None:
        connection = connection or Connection()
        self._metadata = connection.metadata()
        self._channel = channel or connection.channel(address)
        self._stub = service_pb2_grpc.LilSparseServiceStub(self._channel)

    def __enter__(self) -> LilClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        token_ids: Sequence[int] | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> GenerationStream:
        """Start a generation; ``options`` are :class:`GenerateOptions` fields."""
        request = build_request(
            prompt, messages=messages, token_ids=token_ids, options=GenerateOptions(**options)
        )
        return GenerationStream(self._stub.Generate(request, timeout=timeout, metadata=self._metadata))

    def complete(self, prompt: str | None = None, **kwargs: Any) -> Summary:
        """Generate and return only the summary (its ``text`` is the whole completion)."""
        stream = self.generate(prompt, **kwargs)
        for _ in stream:
            pass
        return stream.summary

    def info(self, timeout: float | None = None) -> service_pb2.GetInfoResponse:
        try:
            return self._stub.GetInfo(service_pb2.GetInfoRequest(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise to_client_error(error) from None


class AsyncLilClient:
    """asyncio client; same API with ``async for`` and ``await``."""

    def __init__(
        self, address: str, channel: grpc.aio.Channel | None = None, connection: Connection | None = None
    ) -> None:
        connection = connection or Connection()
        self._metadata = connection.metadata()
        self._channel = channel or connection.aio_channel(address)
        self._stub = service_pb2_grpc.LilSparseServiceStub(self._channel)

    async def __aenter__(self) -> AsyncLilClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, str]] | None = None,
        token_ids: Sequence[int] | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> AsyncGenerationStream:
        request = build_request(
            prompt, messages=messages, token_ids=token_ids, options=GenerateOptions(**options)
        )
        return AsyncGenerationStream(self._stub.Generate(request, timeout=timeout, metadata=self._metadata))

    async def complete(self, prompt: str | None = None, **kwargs: Any) -> Summary:
        return await self.generate(prompt, **kwargs).collect()

    async def info(self, timeout: float | None = None) -> service_pb2.GetInfoResponse:
        try:
            request = service_pb2.GetInfoRequest()
            return await self._stub.GetInfo(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise to_client_error(error) from None
