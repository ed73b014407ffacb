"""router.tls: both fields or none, secret references only, and (render, deploy) a certificate
that parses, a key that is its key, a certificate that covers the router's address. Certificates
come from the lab CA's code (hxp_runtime.certs); no message quotes key material."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from hxp_runtime.certs import Issued, create_ca, issue
from hxp_runtime.config import ConfigError, Problem, load_config
from tests.unit.conftest import BASE, Problems, line_of, only

ROUTER = ipaddress.IPv4Address("10.0.0.10")  # llm-1 of BASE
TLS = "router:\n  tls:\n    certificate: file:{cert}\n    key: file:{key}\n  fallbacks:"


@pytest.fixture(scope="module")
def ca() -> Issued:
    return create_ca("unit CA")


@pytest.fixture(scope="module")
def pair(ca: Issued) -> Issued:
    return issue(ca, "llm-1", [ROUTER])


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HXP_DB_PASSWORD", "db-password-0123456789")
    monkeypatch.setenv("HXP_REDIS_PASSWORD", "redis-password-0123456789")
    yield


Checked = Callable[[bytes, bytes], list[Problem]]


@pytest.fixture
def checked(tmp_path: Path, secrets_env: None) -> Checked:
    """The problems of BASE with router.tls set to these PEM files, as render checks it."""

    def check(certificate: bytes, key: bytes) -> list[Problem]:
        cert_file, key_file = tmp_path / "router.crt", tmp_path / "router.key"
        cert_file.write_bytes(certificate)
        key_file.write_bytes(key)
        config = tmp_path / "hxp.yml"
        config.write_text(
            BASE.replace("router:\n  fallbacks:", TLS.format(cert=cert_file, key=key_file))
        )
        try:
            load_config(config, check_secrets=True)
        except ConfigError as exc:
            for problem in exc.errors:
                assert "PRIVATE KEY" not in problem.message
                assert key.decode().splitlines()[1] not in problem.message
            return exc.errors
        return []

    return check


def test_a_pair_that_covers_the_router_is_valid(checked: Checked, pair: Issued) -> None:
    assert checked(pair.certificate, pair.key) == []


def test_a_certificate_without_its_key_is_refused(problems_of: Problems) -> None:
    text = BASE.replace("router:\n", "router:\n  tls: {certificate: file:/etc/ssl/router.crt}\n")
    problem = only(problems_of(text))
    assert problem.field == "router.tls"
    assert "needs both certificate and key; add key" in problem.message
    assert problem.line == line_of(text, "tls: {certificate")


def test_a_pasted_certificate_is_refused_without_being_repeated(problems_of: Problems) -> None:
    text = BASE.replace(
        "router:\n", "router:\n  tls: {certificate: '-----BEGIN CERTIFICATE-----', key: env:K}\n"
    )
    problem = only(problems_of(text))
    assert problem.field == "router.tls.certificate"
    assert "plaintext secret is not allowed" in problem.message
    assert "BEGIN" not in problem.message


def test_validate_alone_reads_no_secret(load_text: Callable[[str], object]) -> None:
    text = BASE.replace("router:\n  fallbacks:", TLS.format(cert="/nonexistent/c", key="/n/k"))
    load_text(text)  # render and deploy check the pair; validate does not read secrets


def test_not_pem(checked: Checked, pair: Issued) -> None:
    problem = only(checked(b"not a certificate\n", pair.key))
    assert problem.field == "router.tls.certificate"
    assert "is not a PEM certificate" in problem.message


def test_a_key_of_another_certificate(checked: Checked, ca: Issued, pair: Issued) -> None:
    other = issue(ca, "llm-1", [ROUTER])
    problem = only(checked(pair.certificate, other.key))
    assert problem.field == "router.tls.key"
    assert "does not belong to the certificate" in problem.message


def test_an_encrypted_key(checked: Checked, pair: Issued) -> None:
    key = serialization.load_pem_private_key(pair.key, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    problem = only(checked(pair.certificate, encrypted))
    assert problem.field == "router.tls.key"
    assert "encrypted" in problem.message


def test_a_certificate_for_another_address(checked: Checked, ca: Issued) -> None:
    elsewhere = issue(ca, "llm-1", [ipaddress.IPv4Address("10.0.0.99")])
    problem = only(checked(elsewhere.certificate, elsewhere.key))
    assert problem.field == "router.tls.certificate"
    assert "does not cover the router's address 10.0.0.10 (host llm-1)" in problem.message
    assert "llm-1, 10.0.0.99" in problem.message  # what it does cover


def test_an_expired_certificate(checked: Checked, ca: Issued) -> None:
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    old = issue(ca, "llm-1", [ROUTER], days=10, not_before=start)
    problem = only(checked(old.certificate, old.key))
    assert problem.field == "router.tls.certificate"
    assert "expired on" in problem.message
