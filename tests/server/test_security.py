"""TLS, mTLS and bearer-token auth, with certificates made here by the openssl command line."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lil_client import Connection, LilClient, LilClientError
from server_harness import scrape, start_server

from server.config import ServerConfig

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
SERVING = health_pb2.HealthCheckResponse.SERVING


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(name: str, ca: str, cwd: Path, extensions: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={name}",
             "-out", f"{name}.csr", cwd=cwd)  # fmt: skip
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
             cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a rogue CA."""
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-days", "2", "-subj", f"/CN={ca}", cwd=folder)  # fmt: skip
    _signed(
        "server", "ca", folder, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    _signed("client", "ca", folder, "extendedKeyUsage=clientAuth\n")
    _signed("rogue-client", "rogue-ca", folder, "extendedKeyUsage=clientAuth\n")
    (folder / "token").write_text("s3cret-token\n")
    return folder


@pytest.fixture()
def tls_server(tiny_model_dir: Path, tiny_engine: Any, pki: Path) -> Iterator[Any]:
    background = start_server(
        tiny_model_dir,
        tiny_engine,
        tls_cert_file=str(pki / "server.pem"),
        tls_key_file=str(pki / "server.key"),
        health_port=0,
    )
    yield background
    background.stop()


def _complete(address: str, connection: Connection) -> int:
    with LilClient(address, connection=connection) as client:
        return client.complete("hello", max_new_tokens=3, ignore_eos=True, timeout=30).completion_tokens


def test_tls_handshake_with_a_certificate_made_here(tls_server: Any, pki: Path) -> None:
    assert _complete(tls_server.address, Connection(ca_file=str(pki / "ca.pem"))) == 3
    with pytest.raises(LilClientError) as plaintext:
        _complete(tls_server.address, Connection())
    with pytest.raises(LilClientError) as wrong_ca:
        _complete(tls_server.address, Connection(ca_file=str(pki / "rogue-ca.pem")))
    assert plaintext.value.code == wrong_ca.value.code == grpc.StatusCode.UNAVAILABLE
    # Probes reach health on its own plaintext port.
    with grpc.insecure_channel(f"127.0.0.1:{tls_server.server.health_port}") as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == SERVING


def test_mtls_refuses_a_client_without_a_certificate_its_ca_signed(
    tiny_model_dir: Path, tiny_engine: Any, pki: Path
) -> None:
    background = start_server(
        tiny_model_dir,
        tiny_engine,
        tls_cert_file=str(pki / "server.pem"),
        tls_key_file=str(pki / "server.key"),
        tls_client_ca_file=str(pki / "ca.pem"),
    )
    ca = str(pki / "ca.pem")
    try:
        with_cert = Connection(
            ca_file=ca, cert_file=str(pki / "client.pem"), key_file=str(pki / "client.key")
        )
        assert _complete(background.address, with_cert) == 3
        rogue = Connection(
            ca_file=ca, cert_file=str(pki / "rogue-client.pem"), key_file=str(pki / "rogue-client.key")
        )
        failures = []
        for connection in (Connection(ca_file=ca), rogue):
            with pytest.raises(LilClientError) as refused:
                _complete(background.address, connection)
            failures.append(refused.value.code)
    finally:
        background.stop()
    assert failures == [grpc.StatusCode.UNAVAILABLE] * 2


@pytest.mark.parametrize("exempt_health", [True, False])
def test_bearer_token_is_required(
    tiny_model_dir: Path, tiny_engine: Any, pki: Path, exempt_health: bool
) -> None:
    background = start_server(
        tiny_model_dir, tiny_engine, auth_token_file=str(pki / "token"), auth_exempt_health=exempt_health
    )
    try:
        assert _complete(background.address, Connection(token_file=str(pki / "token"))) == 3
        codes = []
        for connection in (Connection(), Connection(token="wrong"), Connection(token="s3cret-token ")):
            with pytest.raises(LilClientError) as refused:
                _complete(background.address, connection)
            codes.append((refused.value.code, refused.value.message))
        wrong = Connection(token="wrong")
        with (
            LilClient(background.address, connection=wrong) as client,
            pytest.raises(LilClientError) as info_refused,
        ):
            client.info(timeout=10)
        with grpc.insecure_channel(background.address) as channel:
            try:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                health_code = grpc.StatusCode.OK if health.status == SERVING else grpc.StatusCode.UNKNOWN
            except grpc.RpcError as error:
                health_code = error.code()
    finally:
        background.stop()
    denied = (grpc.StatusCode.UNAUTHENTICATED, "authorization: missing or wrong bearer token")
    assert codes == [denied] * 3
    assert info_refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert health_code == (grpc.StatusCode.OK if exempt_health else grpc.StatusCode.UNAUTHENTICATED)


def test_metric_labels_carry_the_model_name_not_its_path(tiny_model_dir: Path, tiny_engine: Any) -> None:
    background = start_server(tiny_model_dir, tiny_engine)
    try:
        labels = {
            value for (_, pairs) in scrape(background.metrics_port) for key, value in pairs if key == "model"
        }
    finally:
        background.stop()
    assert labels == {tiny_model_dir.name}
    assert "/" not in tiny_model_dir.name and str(tiny_model_dir) not in labels


def test_serve_binds_loopback_by_default() -> None:
    assert ServerConfig(model="m").host == "127.0.0.1"


def test_client_cli_sends_the_token_and_verifies_tls(tls_server: Any, pki: Path) -> None:
    from io import StringIO

    from lil_client.cli import main

    address = ["--address", tls_server.address]
    out = StringIO()
    assert main([*address, "--ca-file", str(pki / "ca.pem"), "info", "--json"], out=out) == 0
    assert '"max_context": 2048' in out.getvalue()
    assert main([*address, "info"], out=StringIO()) == 1  # plaintext against a TLS port
