"""HTTPS on the router's public port: the real daemon (three workers on one SO_REUSEPORT port,
and two on a socket passed as systemd passes it) in front of ``benchmarks/fast_backend.py``,
with a certificate from a CA made by the same code as the lab's (hxp_runtime.certs).

What a client sees: the openai SDK verifying against the CA gets a completion; one without the
CA fails verification; plain HTTP gets no HTTP answer. What an operator sees: the expiry gauge is
the certificate's notAfter, and a certificate replaced on disk is served after SIGHUP by every
worker, while a broken pair is refused and the running one stays.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hxp_runtime.certs import Issued, create_ca, issue, not_after, write_private
from tests.dataplane import free_port
from tests.integration.router.conftest import RouterProcess, call, fast_backend
from tests.integration.router.test_router_socket import ACTIVATE, SocketRouter

pytestmark = pytest.mark.slow

WORKERS = 3
KEY = "hxp-tls-test-key-0123456789"
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
GAUGE = "hxp_router_tls_certificate_expiry_timestamp_seconds"


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def install(pair: Issued, directory: Path) -> None:
    """Replace the router's files the way a deployment does: each written whole, then renamed."""
    for name, data in (("router.crt", pair.certificate), ("router.key", pair.key)):
        staged = directory / f".{name}.new"
        write_private(staged, data)
        staged.replace(directory / name)


def served_certificate(port: int) -> bytes:
    """The certificate a new connection to ``port`` is shown (DER), unverified."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    assert served is not None
    return served


def expiry_gauge(router: RouterProcess) -> float:
    status, _, body = call("GET", router.url + "/metrics", context=router.client_context)
    assert status == 200
    values = [
        float(line.split()[-1]) for line in body.decode().splitlines() if line.startswith(GAUGE)
    ]
    assert len(values) == 1, f"one {GAUGE} series expected, got {values}"
    return values[0]


@pytest.fixture(scope="module")
def ca() -> Issued:
    return create_ca("hxp test CA")


@pytest.fixture(scope="module")
def router(
    ca: Issued, backend_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterProcess]:
    directory = tmp_path_factory.mktemp("tls-router")
    (directory / "ca.crt").write_bytes(ca.certificate)
    install(issue(ca, "localhost", [LOOPBACK]), directory)
    settings = {
        "listen_host": "127.0.0.1",
        "port": free_port(),
        "workers": WORKERS,
        "drain_timeout_s": 5,
        "health_check": {"enabled": True, "interval_s": 1, "timeout_s": 1},
        "tls": {
            "certificate_file": str(directory / "router.crt"),
            "key_file": str(directory / "router.key"),
        },
        "backends": [fast_backend(backend_port)],
    }
    secrets = {"api_keys": [{"name": "tls", "secret": KEY}]}
    process = RouterProcess(settings, secrets, directory, ca_file=directory / "ca.crt")
    process.start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


def test_the_openai_client_verifying_against_the_ca_gets_a_completion(
    router: RouterProcess,
) -> None:
    assert router.ca_file is not None
    with httpx2.Client(verify=ssl.create_default_context(cafile=router.ca_file)) as http:
        client = openai.OpenAI(
            base_url=router.url + "/v1", api_key=KEY, http_client=http, max_retries=0
        )
        completion = client.completions.create(model="fast", prompt="hello", max_tokens=4)
    assert completion.model == "fast"
    assert completion.choices[0].text


def test_a_client_without_the_ca_fails_verification(router: RouterProcess) -> None:
    with httpx2.Client() as http:  # the system's trust store, which never heard of the test CA
        client = openai.OpenAI(
            base_url=router.url + "/v1", api_key=KEY, http_client=http, max_retries=0
        )
        with pytest.raises(openai.APIConnectionError) as raised:
            client.completions.create(model="fast", prompt="hello", max_tokens=4)
    cause: BaseException | None = raised.value
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None, f"not a verification failure: {raised.value!r}"


def test_plain_http_to_the_tls_port_gets_no_http_answer(router: RouterProcess) -> None:
    port = router.settings["port"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        plain.sendall(b"GET /health HTTP/1.1\r\nHost: router\r\n\r\n")
        answer = b""
        try:
            while chunk := plain.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert not answer.startswith(b"HTTP/"), answer[:200]
    with pytest.raises((OSError, ConnectionError)):
        call("GET", f"http://127.0.0.1:{port}/health", timeout=10)


def test_the_expiry_gauge_is_the_certificates_not_after(router: RouterProcess) -> None:
    certificate = Path(router.settings["tls"]["certificate_file"]).read_bytes()
    assert expiry_gauge(router) == not_after(certificate).timestamp()


def test_sighup_serves_a_replaced_certificate_and_refuses_a_broken_one(
    router: RouterProcess, ca: Issued
) -> None:
    directory, port = router.directory, router.settings["port"]
    old = Path(router.settings["tls"]["certificate_file"]).read_bytes()
    rotated = issue(ca, "localhost", [LOOPBACK], days=30)
    install(rotated, directory)
    # Nothing reads the files until told: the running pair is still served.
    assert served_certificate(port) == der(old)
    router.signal(signal.SIGHUP)
    wanted = der(rotated.certificate)
    deadline = time.monotonic() + 30
    # SO_REUSEPORT spreads new connections over the workers: a run of them all showing the new
    # certificate means every worker reloaded.
    streak = 0
    while streak < 8 * WORKERS:
        assert time.monotonic() < deadline, (
            f"not every worker serves the new certificate\n{router.log_tail()}"
        )
        streak = streak + 1 if served_certificate(port) == wanted else 0
    assert expiry_gauge(router) == not_after(rotated.certificate).timestamp()

    # A key that is not the certificate's: the reload is refused, the rotated pair stays.
    other = issue(ca, "localhost", [LOOPBACK])
    write_private(directory / ".router.key.new", other.key)
    (directory / ".router.key.new").replace(directory / "router.key")
    router.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while router.log_tail(200).count("reload refused, the running certificate") < WORKERS:
        assert time.monotonic() < deadline, router.log_tail()
        time.sleep(0.2)
    assert all(served_certificate(port) == wanted for _ in range(4 * WORKERS))
    install(rotated, directory)  # leave a loadable pair for the router's stop


def test_workers_serve_tls_on_a_socket_from_systemd(
    router: RouterProcess, backend_port: int, tmp_path: Path
) -> None:
    """The other way a worker gets its socket: inherited (sd_listen_fds), as hxp-router.socket
    gives it; the same files, a second router on its own socket."""
    listener = socket.create_server(("127.0.0.1", free_port()), backlog=64)
    settings = {**router.settings, "port": listener.getsockname()[1], "workers": 2}
    activated = SocketRouter(
        settings,
        router.secrets,
        tmp_path,
        ca_file=router.ca_file,
        listener=listener,
        activate=ACTIVATE,
    )
    try:
        activated.start()
        status, _, body = call(
            "POST",
            activated.url + "/v1/completions",
            {"model": "fast", "prompt": "hello", "max_tokens": 4},
            key=KEY,
            context=activated.client_context,
        )
        assert status == 200, body
        assert "systemd" in activated.log_tail()
    finally:
        assert activated.stop() == 0, activated.log_tail()
        listener.close()
