"""The router's TLS contexts (hxp_runtime.router.tls): the expiry it reads without cryptography,
the pair it refuses, a reload that keeps the running pair when the new one is broken, and the
client context it verifies PostgreSQL and Redis with (CA and address, as verify-full)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest

from hxp_runtime.certs import Issued, create_ca, issue, not_after
from hxp_runtime.router.metrics import RouterMetrics
from hxp_runtime.router.tls import (
    TlsEndpoint,
    TlsError,
    client_context,
    expiry_timestamp,
    redis_tls_kwargs,
    server_context,
)

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


@pytest.fixture(scope="module")
def ca() -> Issued:
    return create_ca("unit CA")


def write(directory: Path, pair: Issued, name: str = "router") -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(pair.certificate)
    key.write_bytes(pair.key)
    return cert, key


@pytest.mark.parametrize("days", [30, 397, 40_000])  # UTCTime up to 2049, GeneralizedTime after
def test_the_expiry_is_the_certificates_not_after(ca: Issued, tmp_path: Path, days: int) -> None:
    pair = issue(ca, "localhost", [LOOPBACK], days=days)
    cert, _ = write(tmp_path, pair)
    assert expiry_timestamp(cert) == not_after(pair.certificate).timestamp()


def test_the_context_speaks_tls_12_and_up(ca: Issued, tmp_path: Path) -> None:
    context = server_context(*write(tmp_path, issue(ca, "localhost", [LOOPBACK])))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    names = {cipher["name"] for cipher in context.get_ciphers()}
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names and all("ECDHE" in name for name in tls12)


def test_a_mismatched_pair_is_refused_naming_files_only(ca: Issued, tmp_path: Path) -> None:
    cert, _ = write(tmp_path, issue(ca, "localhost", [LOOPBACK]), "one")
    _, key = write(tmp_path, issue(ca, "localhost", [LOOPBACK]), "two")
    with pytest.raises(TlsError, match="not a certificate and its key") as raised:
        server_context(cert, key)
    assert "PRIVATE" not in str(raised.value)
    with pytest.raises(TlsError, match="no such file"):
        server_context(cert, tmp_path / "missing.key")


def test_a_broken_reload_keeps_the_running_pair(ca: Issued, tmp_path: Path) -> None:
    first = issue(ca, "localhost", [LOOPBACK], days=10)
    endpoint = TlsEndpoint(*write(tmp_path, first))
    started = endpoint.expiry
    second = issue(ca, "localhost", [LOOPBACK], days=20)
    cert, _ = write(tmp_path, second, "second")
    with pytest.raises(TlsError):
        endpoint.reload(cert, tmp_path / "router.key")  # the first pair's key
    assert endpoint.expiry == started
    endpoint.reload(*write(tmp_path, second, "second"))
    assert endpoint.expiry == not_after(second.certificate).timestamp()
    assert endpoint.expiry - started == pytest.approx(
        datetime.timedelta(days=10).total_seconds(), abs=120
    )


def test_no_expiry_series_without_tls() -> None:
    assert b"tls_certificate" not in RouterMetrics().exposition()
    metrics = RouterMetrics(tls=True)
    assert metrics.tls_expiry is not None
    metrics.tls_expiry.set(1.8e9)
    assert b"hxp_router_tls_certificate_expiry_timestamp_seconds 1.8e+09" in metrics.exposition()


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, address: str) -> None:
    """A TLS handshake between the two contexts in memory, the client connecting to
    ``address``; raises ssl.SSLError (SSLCertVerificationError) when the client refuses."""
    to_client, to_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    near = client.wrap_bio(to_client, to_server, server_hostname=address)
    far = server.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(10):
        done = 0
        for end in (near, far):
            try:
                end.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        if done == 2:
            return
    raise AssertionError("the handshake did not finish")


def test_the_client_context_verifies_the_ca_and_the_address(ca: Issued, tmp_path: Path) -> None:
    server = server_context(*write(tmp_path, issue(ca, "llm-1", [LOOPBACK])))
    (tmp_path / "ca.crt").write_bytes(ca.certificate)
    (tmp_path / "other.crt").write_bytes(create_ca("another CA").certificate)
    handshake(server, client_context(tmp_path / "ca.crt"), "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        handshake(server, client_context(tmp_path / "ca.crt"), "10.0.0.99")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(server, client_context(tmp_path / "other.crt"), "127.0.0.1")


def test_a_missing_or_broken_ca_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="no such file; install the CA certificate"):
        client_context(tmp_path / "missing.crt")
    (tmp_path / "broken.crt").write_text("not a certificate\n")
    with pytest.raises(TlsError, match="not a PEM CA certificate"):
        redis_tls_kwargs(tmp_path / "broken.crt")
    assert redis_tls_kwargs(None) == {}
