"""Transport security and caller authentication: TLS / mTLS credentials and a bearer-token check.

TLS: ``tls_cert_file`` + ``tls_key_file`` (PEM). mTLS: ``tls_client_ca_file`` as well; the
handshake then fails for a client without a certificate that CA signed. Bearer token: every call
carries ``authorization: Bearer <token>`` metadata, compared in constant time
(``hmac.compare_digest``); otherwise the call ends UNAUTHENTICATED before the servicer runs.
Health checks are exempt by default so kubelet gRPC probes need no secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from server.config import ServerConfig

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"


def read_token(path: str) -> str:
    """The token in ``path`` without surrounding whitespace; ValueError naming the setting."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"auth_token_file: cannot read {path}: {error}") from None
    if not token:
        raise ValueError(f"auth_token_file: {path} is empty")
    return token


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the config's PEM files, or None for a plaintext port."""
    if not config.tls:
        return None

    def pem(setting: str, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as error:
            raise ValueError(f"{setting}: cannot read {path}: {error}") from None

    pair = (pem("tls_key_file", config.tls_key_file), pem("tls_cert_file", config.tls_cert_file))
    client_ca = pem("tls_client_ca_file", config.tls_client_ca_file) if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def _deny_unary(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: missing or wrong bearer token")


async def _deny_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: missing or wrong bearer token")
    yield  # an async generator, as a server-streaming handler must be


class BearerTokenAuth(grpc.aio.ServerInterceptor):
    """Refuses every call whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str, exempt_health: bool) -> None:
        self._expected = f"Bearer {token}".encode()
        self._exempt_health = exempt_health

    def _allowed(self, details: grpc.HandlerCallDetails) -> bool:
        if self._exempt_health and details.method.startswith(HEALTH_METHOD_PREFIX):
            return True
        metadata: Any = details.invocation_metadata or ()
        given = next((value for key, value in metadata if key == "authorization"), "")
        given_bytes = given if isinstance(given, bytes) else str(given).encode()
        return hmac.compare_digest(given_bytes, self._expected)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or self._allowed(handler_call_details):
            return handler
        # Same call shape as the real method, without deserializing the request.
        if handler.response_streaming:
            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(_deny_stream)
            return grpc.unary_stream_rpc_method_handler(_deny_stream)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(_deny_unary)
        return grpc.unary_unary_rpc_method_handler(_deny_unary)


def interceptors(config: ServerConfig) -> list[grpc.aio.ServerInterceptor]:
    if not config.auth_token_file:
        return []
    return [BearerTokenAuth(read_token(config.auth_token_file), config.auth_exempt_health)]
