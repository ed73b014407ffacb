"""TLS of the router: HTTPS on its public port (the context every worker wraps its socket
with), and the client contexts it verifies PostgreSQL and Redis with.

The same listening socket serves TLS (from systemd or bound with SO_REUSEPORT): the worker hands
aiohttp an :class:`ssl.SSLContext` for it. The certificate and key are read at start and again
on every reload (SIGHUP), so a rotated certificate is served without a restart: the context the
server was started with keeps an SNI callback that gives each new handshake the context loaded
last. A pair that does not load (missing file, key not the certificate's) refuses the reload and
the running certificate stays.

Plain HTTP sent to the TLS port gets no answer: the handshake fails on its first bytes and the
connection is closed (no plaintext is ever answered on the port; a client sees a reset or an
empty reply). TLS 1.2 and 1.3 only, forward-secret AEAD ciphers only.

Standard library only: the hosts' router has no ``cryptography``. The certificate's expiry (for
``hxp_router_tls_certificate_expiry_timestamp_seconds``) is read from its DER encoding here.
"""

from __future__ import annotations

import base64
import calendar
import re
import ssl
import time
from pathlib import Path
from typing import Any

# TLS 1.2 suites (TLS 1.3's are all AEAD and forward secret, OpenSSL's defaults): ECDHE only.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)


class TlsError(Exception):
    """The certificate or key cannot be used; the message names the file, never its content."""


def server_context(certificate: Path, key: Path) -> ssl.SSLContext:
    """A server context holding the pair, TLS 1.2+, modern ciphers; raises TlsError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(certificate, key)
    except FileNotFoundError as exc:
        raise TlsError(f"{exc.filename}: no such file; install the certificate and key") from None
    except PermissionError as exc:
        raise TlsError(f"{exc.filename}: not readable by the router's user") from None
    except ssl.SSLError as exc:
        # OpenSSL's reason names what failed (KEY_VALUES_MISMATCH, a PEM error), not the input.
        raise TlsError(
            f"{certificate} and {key} are not a certificate and its key ({exc.reason}); "
            "give the PEM certificate and the private key it was issued for"
        ) from None
    return context


def client_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that trusts only the CA(s) in ``ca_file`` and checks that the server's
    certificate names the host or address connected to (libpq's sslmode=verify-full); TLS 1.2+.
    Raises TlsError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca_file)
    except FileNotFoundError:
        raise TlsError(f"{ca_file}: no such file; install the CA certificate") from None
    except PermissionError:
        raise TlsError(f"{ca_file}: not readable by the router's user") from None
    except ssl.SSLError as exc:
        raise TlsError(f"{ca_file}: not a PEM CA certificate ({exc.reason})") from None
    return context


def redis_tls_kwargs(ca_file: Path | None) -> dict[str, Any]:
    """redis-py's arguments for TLS verified with ``ca_file`` (none: plain TCP, no arguments).
    The file is loaded here first so that a missing or broken CA is a TlsError at start, not a
    failed connection later."""
    if ca_file is None:
        return {}
    client_context(ca_file)
    return {
        "ssl": True,
        "ssl_ca_certs": str(ca_file),
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }


def expiry_timestamp(certificate: Path) -> float:
    """The notAfter of the first certificate in a PEM file, as a Unix timestamp."""
    try:
        match = _PEM_CERT.search(certificate.read_bytes())
        if match is None:
            raise TlsError(f"{certificate}: no PEM certificate in it")
        return _not_after(base64.b64decode(match[1]))
    except (OSError, ValueError, IndexError) as exc:
        raise TlsError(f"{certificate}: cannot read the certificate's expiry ({exc})") from None


def _der(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``at``."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[at : at + count], "big")
        at += count
    return tag, at, at + length


def _not_after(der: bytes) -> float:
    # Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
    # signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... }
    _, certificate, _ = _der(der, 0)
    _, at, _ = _der(der, certificate)  # the first field of tbsCertificate
    tag, _, end = _der(der, at)
    if tag == 0xA0:  # the explicit version
        at = end
    for _ in range(3):  # serialNumber, signature, issuer
        _, _, at = _der(der, at)
    _, validity, _ = _der(der, at)
    _, _, at = _der(der, validity)  # past notBefore
    tag, start, end = _der(der, at)
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: years 50-99 are 19xx (RFC 5280)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError(f"notAfter has the unexpected DER tag {tag:#x}")
    return float(calendar.timegm(time.strptime(text, "%Y%m%d%H%M%SZ")))


class TlsEndpoint:
    """The public port's TLS: the context the server starts with, and the pair loaded last."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.context = server_context(certificate, key)
        self.expiry = expiry_timestamp(certificate)
        self._current = self.context
        self.context.sni_callback = self._choose

    def _choose(self, connection: ssl.SSLObject, server_name: str | None, _: object) -> None:
        # Called for every handshake, with or without SNI (None): the latest pair answers it.
        connection.context = self._current

    def reload(self, certificate: Path, key: Path) -> None:
        """Serve the pair in these files from the next handshake on; raises TlsError (and keeps
        the running pair) when they do not load."""
        context = server_context(certificate, key)
        self.expiry = expiry_timestamp(certificate)
        self._current = context
