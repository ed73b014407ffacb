"""X.509 on the controller: the checks of the router's certificate and key (hxp.yml
``router.tls``) and the lab's certificate authority.

The router itself reads its files with the standard library only (hxp_runtime.router.tls); this
module needs ``cryptography``, which the controller has (ansible-core depends on it) and the
hosts do not.

No message here ever quotes key material: a problem names what is wrong and what to do.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# A lab CA lives as long as a lab could; a leaf no longer than browsers accept (398 days).
CA_DAYS = 3650
LEAF_DAYS = 397
# Clock skew between the controller and a host: a certificate is valid from a little earlier.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class PairProblems:
    """What is wrong with a certificate and its key, each list for its own field."""

    certificate: list[str]
    key: list[str]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _public_der(holder: x509.Certificate | PrivateKeyTypes) -> bytes:
    return holder.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _san(cert: x509.Certificate) -> tuple[list[str], list[object]]:
    """The DNS names and IP addresses (networks too, as x509 allows) the certificate names."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return ext.get_values_for_type(x509.DNSName), list(ext.get_values_for_type(x509.IPAddress))


def check_pair(
    cert_pem: bytes,
    key_pem: bytes,
    address: ipaddress.IPv4Address,
    host_name: str,
    server: str = "the router",
) -> PairProblems:
    """The problems of a PEM certificate (chain, leaf first) and its PEM private key for
    ``server`` (in messages: "the router", "PostgreSQL") that clients reach at ``address`` (hxp
    addresses hosts by IP: the scrape, the role's health checks, `hxp status`), also known as
    ``host_name``."""
    problems = PairProblems([], [])
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        problems.certificate.append(
            "is not a PEM certificate (-----BEGIN CERTIFICATE-----); give the certificate "
            "(its chain after it, if any)"
        )
        chain = []
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        problems.key.append(
            "the private key is encrypted; give it unencrypted (the file on the host is "
            "readable by the router's user only)"
        )
        key = None
    except (ValueError, UnsupportedAlgorithm):
        problems.key.append(
            "is not a PEM private key (-----BEGIN PRIVATE KEY-----); give the certificate's key"
        )
        key = None
    if not chain:
        return problems
    leaf = chain[0]
    if key is not None and _public_der(key) != _public_der(leaf):
        problems.key.append(
            "does not belong to the certificate (their public keys differ); give the key the "
            "certificate was issued for"
        )
    if leaf.not_valid_after_utc <= _now():
        problems.certificate.append(
            f"expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; issue a new certificate"
        )
    names, addresses = _san(leaf)
    if address not in addresses:
        covered = ", ".join([*names, *map(str, addresses)]) or "nothing"
        problems.certificate.append(
            f"does not cover {server}'s address {address} (host {host_name}): its subject "
            f"alternative names cover {covered}; issue it with IP:{address} (and DNS:{host_name}) "
            "in subjectAltName"
        )
    return problems


def check_issuer(cert_pem: bytes, ca_pem: bytes) -> list[str]:
    """The problems of a PEM certificate (chain, leaf first) that clients verify with only the
    CA certificate(s) in ``ca_pem``: one of the chain's certificates must be signed by one of
    them (OpenSSL on the client checks the rest of the path)."""
    try:
        anchors = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        return ["is not a PEM certificate (-----BEGIN CERTIFICATE-----); give the CA's certificate"]
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        return []  # check_pair reports the certificate itself
    for cert in chain:
        for anchor in anchors:
            try:
                cert.verify_directly_issued_by(anchor)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return []
    subjects = ", ".join(a.subject.rfc4514_string() for a in anchors) or "nothing"
    return [
        f"did not issue the certificate (this CA is {subjects}; the certificate's issuer is "
        f"{chain[-1].issuer.rfc4514_string()}); give the CA that issued it"
    ]


# --------------------------------------------------------------------------- a CA


@dataclass(frozen=True)
class Issued:
    certificate: bytes  # PEM
    key: bytes  # PEM, PKCS#8, unencrypted


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_ca(common_name: str, days: int = CA_DAYS) -> Issued:
    """A self-signed CA that may sign server certificates only (pathlen 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: Issued,
    host_name: str,
    addresses: Sequence[ipaddress.IPv4Address],
    days: int = LEAF_DAYS,
    not_before: datetime.datetime | None = None,
) -> Issued:
    """A server certificate for ``host_name`` and ``addresses``, signed by ``ca``."""
    ca_cert = x509.load_pem_x509_certificate(ca.certificate)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key made by create_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - BACKDATE
    san = [x509.DNSName(host_name), *(x509.IPAddress(a) for a in addresses)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def not_after(cert_pem: bytes) -> datetime.datetime:
    """When the (first) certificate of a PEM file expires."""
    return x509.load_pem_x509_certificates(cert_pem)[0].not_valid_after_utc


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only, from the first byte on."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with open(path, "xb", opener=lambda name, flags: os.open(name, flags, 0o600)) as handle:
        handle.write(data)


@dataclass(frozen=True)
class FileCa:
    """A CA kept in a directory: ``ca.crt`` (give it to clients) and ``ca.key`` (0600)."""

    directory: Path

    @property
    def certificate_file(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def key_file(self) -> Path:
        return self.directory / "ca.key"

    def ensure(self, common_name: str) -> Issued:
        """The CA, created on first use (idempotent)."""
        if self.key_file.exists() and self.certificate_file.exists():
            return Issued(self.certificate_file.read_bytes(), self.key_file.read_bytes())
        ca = create_ca(common_name)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.key_file, ca.key)
        self.certificate_file.write_bytes(ca.certificate)
        return ca


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m hxp_runtime.certs DIR FILE_STEM HOST ADDRESS...``: issue a server pair for
    HOST and its ADDRESSes with the CA kept in DIR (created on first use) into
    DIR/FILE_STEM.crt and DIR/FILE_STEM.key (0600), unless both exist. The Molecule scenarios
    issue their servers' certificates with it, as ``hxp lab up`` does with the lab's CA."""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m hxp_runtime.certs")
    parser.add_argument("directory", type=Path)
    parser.add_argument("stem")
    parser.add_argument("host")
    parser.add_argument("addresses", nargs="+", type=ipaddress.IPv4Address)
    args = parser.parse_args(argv)
    certificate = args.directory / f"{args.stem}.crt"
    key = args.directory / f"{args.stem}.key"
    if certificate.exists() and key.exists():
        return
    pair = issue(FileCa(args.directory).ensure("hxp scenario CA"), args.host, args.addresses)
    write_private(key, pair.key)
    certificate.write_bytes(pair.certificate)


if __name__ == "__main__":
    main()
