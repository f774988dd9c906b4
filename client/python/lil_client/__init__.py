"""Python client for the lil-sparse gRPC sidecar (depends only on grpcio and protobuf)."""

from lil_client.client import AsyncLilClient, LilClient
from lil_client.connection import Connection
from lil_client.request import GenerateOptions, build_request
from lil_client.stream import AsyncGenerationStream, GenerationStream
from lil_client.types import (
    Chunk,
    GuardianCheck,
    GuardianSummary,
    KVSummary,
    LilClientError,
    Summary,
    Timings,
)

__all__ = [
    "AsyncGenerationStream",
    "AsyncLilClient",
    "Chunk",
    "Connection",
    "GenerateOptions",
    "GenerationStream",
    "GuardianCheck",
    "GuardianSummary",
    "KVSummary",
    "LilClient",
    "LilClientError",
    "Summary",
    "Timings",
    "build_request",
]
