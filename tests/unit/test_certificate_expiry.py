"""Role node_exporter's certificate expiry export (templates/usr/local/sbin/
hxp-certificate-expiry.j2), rendered as a deploy renders it and run with Debian's openssl on
real certificates: the notAfter of each registered certificate, a read error for one that cannot
be read, nothing for a name that is not a service's, and a file the node exporter can parse."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.unit_templates import REPO, render, variables

SCRIPT = REPO / "roles/node_exporter/templates/usr/local/sbin/hxp-certificate-expiry.j2"
NOT_AFTER = datetime.datetime(2031, 5, 17, 8, 30, 15, tzinfo=datetime.UTC)


def certificate(not_after: datetime.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hxp test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - datetime.timedelta(days=30))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def export(tmp_path: Path, registered: dict[str, bytes]) -> tuple[str, str]:
    """Runs the rendered script on a registry holding ``registered``: (the .prom file, stderr)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not found: apt-get install openssl (Debian's, as on the hosts)")
    facts = variables(SCRIPT, "sample")
    registry, textfiles = tmp_path / "certificates.d", tmp_path / "textfile"
    registry.mkdir()
    textfiles.mkdir()
    for name, content in registered.items():
        (registry / name).write_bytes(content)
    script = tmp_path / "hxp-certificate-expiry"
    script.write_text(
        render(SCRIPT, "sample")
        .replace(facts["_hxp_node_exporter_certificate_dir"], str(registry))
        .replace(facts["_hxp_node_exporter_textfile_dir"], str(textfiles))
    )
    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    # Only the finished file is left: no temporary file for the collector to find.
    assert sorted(p.name for p in textfiles.iterdir()) == ["hxp-certificates.prom"]
    prom = textfiles / "hxp-certificates.prom"
    assert prom.stat().st_mode & 0o777 == 0o644
    return prom.read_text(), done.stderr


def samples(text: str) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels["certificate"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_each_registered_certificate_exports_its_not_after(tmp_path: Path) -> None:
    later = NOT_AFTER + datetime.timedelta(days=400)
    text, _ = export(
        tmp_path, {"postgresql.crt": certificate(NOT_AFTER), "redis.crt": certificate(later)}
    )
    assert samples(text) == {
        ("hxp_certificate_expiry_timestamp_seconds", "postgresql"): NOT_AFTER.timestamp(),
        ("hxp_certificate_expiry_timestamp_seconds", "redis"): later.timestamp(),
        ("hxp_certificate_read_error", "postgresql"): 0,
        ("hxp_certificate_read_error", "redis"): 0,
    }


def test_an_unreadable_certificate_is_a_read_error_not_silence(tmp_path: Path) -> None:
    text, stderr = export(
        tmp_path,
        {"postgresql.crt": certificate(NOT_AFTER), "redis.crt": b"-----BEGIN CERTIFICATE-----\n"},
    )
    assert samples(text) == {
        ("hxp_certificate_expiry_timestamp_seconds", "postgresql"): NOT_AFTER.timestamp(),
        ("hxp_certificate_read_error", "postgresql"): 0,
        ("hxp_certificate_read_error", "redis"): 1,
    }
    assert "redis.crt: not a readable PEM certificate" in stderr
    assert "BEGIN" not in stderr  # the file's content is never echoed


def test_names_that_are_no_service_are_not_label_values(tmp_path: Path) -> None:
    text, stderr = export(
        tmp_path,
        {'bad"name.crt': certificate(NOT_AFTER), "notes.txt": b"not a certificate"},
    )
    assert samples(text) == {}
    assert 'bad"name.crt: ignored' in stderr


def test_an_empty_registry_writes_an_empty_file(tmp_path: Path) -> None:
    text, stderr = export(tmp_path, {})
    assert samples(text) == {} and stderr == ""
