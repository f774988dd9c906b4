"""How the client reaches the server: plaintext or TLS (optionally with a client certificate),
and an optional bearer token sent as ``authorization`` metadata on every call.

    LilClient("pod:50051", connection=Connection(ca_file="ca.pem", token_file="token"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True, slots=True)
class Connection:
    """TLS is on when ``tls`` is true or any PEM file is given; ``ca_file`` None uses system roots.

    ``cert_file`` and ``key_file`` (together) are the client certificate for mTLS. ``token`` or
    ``token_file`` (not both) is the bearer token. ``server_name`` overrides the name checked
    against the server's certificate (when connecting by IP).
    """

    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file: give cert_file and key_file together (mTLS)")
        if self.token is not None and self.token_file is not None:
            raise ValueError("token: give token or token_file, not both")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )

    def options(self) -> list[tuple[str, str]]:
        return [] if self.server_name is None else [("grpc.ssl_target_name_override", self.server_name)]

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The per-call metadata: the bearer token, if any."""
        token = self.token
        if self.token_file is not None:
            token = Path(self.token_file).read_text(encoding="utf-8").strip()
        return () if token is None else (("authorization", f"Bearer {token}"),)

    def channel(self, address: str) -> grpc.Channel:
        if self.uses_tls:
            return grpc.secure_channel(address, self.credentials(), self.options())
        return grpc.insecure_channel(address)

    def aio_channel(self, address: str) -> grpc.aio.Channel:
        if self.uses_tls:
            return grpc.aio.secure_channel(address, self.credentials(), self.options())
        return grpc.aio.insecure_channel(address)
