"""Role redis on a lab host: Redis bound to one address; with cache.tls, TLS only (a plain
connection gets no answer, one that verifies the certificate and address against the CA is
served); password required, a cache's memory settings, the exporter, hardened units, no secret
in a world-readable file or in the journal.

On the stack (roles/conftest.py) the settings are the rendered ones: Redis beside a single router
binds loopback, its exporter the host's address; TLS as cache.tls says."""

import shlex
from typing import NamedTuple

import pytest

testinfra_hosts = ["cache"]
# The stack's play for this role (roles/conftest.py, converge).
STACK_PLAYBOOK = "cache.yml"
PORT = 6379
EXPORTER_PORT = 9121
TLS_DIR = "/etc/hxp-redis-tls"
CA = f"{TLS_DIR}/ca.crt"
# Python's client context on the host: the CA, the certificate's name for the address.
VERIFIED_HANDSHAKE = """
import socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[1])
with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10) as raw:
    with context.wrap_socket(raw, server_hostname=sys.argv[2]) as tls:
        print(tls.version())
"""


class Settings(NamedTuple):
    bind: str  # where Redis listens and clients connect
    exporter: str  # where its exporter listens
    maxmemory_mb: int
    tls: bool  # cache.tls: TLS only, no plain port


@pytest.fixture(scope="module")
def settings(address, deployed):
    """converge.yml's settings, or the stack's rendered ones."""
    if deployed is None:
        return Settings(bind=address, exporter=address, maxmemory_mb=64, tls=True)
    return Settings(
        bind=deployed["hxp_redis_bind_address"],
        exporter=deployed["hxp_redis_exporter_address"],
        maxmemory_mb=deployed["hxp_redis_maxmemory_mb"],
        tls=bool(deployed.get("hxp_redis_tls_certificate")),
    )


@pytest.fixture(scope="module")
def bind(settings):
    return settings.bind


@pytest.fixture
def needs_tls(settings):
    if not settings.tls:
        pytest.skip("cache.tls is not set in this deployment: there is no TLS to check")


@pytest.fixture(scope="module")
def cli(host, settings):
    """cli(*args, secret=None): redis-cli on the host to Redis's address, over TLS when it
    serves TLS."""

    def run(*args, secret=None):
        return redis_cli(host, settings.bind, *args, secret=secret, tls=settings.tls)

    return run


@pytest.fixture(scope="module")
def password(scenario_secret):
    return scenario_secret("redis-password")


def redis_cli(host, address, *args, secret=None, tls=True):
    auth = f"REDISCLI_AUTH={shlex.quote(secret)} " if secret is not None else ""
    verified = f"--tls --cacert {CA} " if tls else ""
    command = (
        f"{auth}redis-cli -h {address} -p {PORT} {verified}--no-auth-warning {shlex.join(args)}"
    )
    return host.run(command)


@pytest.mark.parametrize("unit", ["redis-server", "prometheus-redis-exporter"])
def test_service_runs_and_is_enabled(assert_running_and_enabled, unit):
    assert_running_and_enabled(unit)


def test_listens_on_the_configured_addresses_only(host, settings):
    listening = host.socket.get_listening_sockets()
    for port, address in ((PORT, settings.bind), (EXPORTER_PORT, settings.exporter)):
        assert [s for s in listening if s.endswith(f":{port}")] == [f"tcp://{address}:{port}"]


def test_a_password_is_required(cli, password):
    anonymous = cli("PING")
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr
    wrong = cli("PING", secret="not-it")  # noqa: S106 - wrong on purpose
    assert "WRONGPASS" in wrong.stdout + wrong.stderr
    assert cli("PING", secret=password).stdout.strip() == "PONG"


@pytest.mark.usefixtures("needs_tls")
def test_a_plain_connection_gets_no_answer(host, bind, password):
    plain = redis_cli(host, bind, "PING", secret=password, tls=False)
    assert "PONG" not in plain.stdout
    assert plain.rc != 0 or plain.stdout.strip() == ""


@pytest.mark.usefixtures("needs_tls")
def test_tls_verified_against_the_ca_is_served(host, bind):
    version = host.check_output("python3 -c %s %s %s %s", VERIFIED_HANDSHAKE, CA, bind, str(PORT))
    assert version in {"TLSv1.2", "TLSv1.3"}


@pytest.mark.usefixtures("needs_tls")
def test_a_client_without_the_ca_fails_verification(host, bind):
    # An empty cafile: the system's trust store, which never heard of the deployment's CA.
    untrusted = host.run("python3 -c %s %s %s %s", VERIFIED_HANDSHAKE, "", bind, str(PORT))
    assert untrusted.rc != 0
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr


@pytest.mark.parametrize(
    ("path", "owner", "mode"),
    [
        (TLS_DIR, "root", 0o755),
        (f"{TLS_DIR}/redis.crt", "root", 0o644),
        (CA, "root", 0o644),
        (f"{TLS_DIR}/redis.key", "redis", 0o600),
    ],
)
@pytest.mark.usefixtures("needs_tls")
def test_the_tls_files(host, path, owner, mode):
    installed = host.file(path)
    assert (installed.user, installed.mode) == (owner, mode)


def test_cache_settings(cli, settings, password):
    def config(name):
        return cli("CONFIG", "GET", name, secret=password).stdout.split()

    assert config("maxmemory") == ["maxmemory", str(settings.maxmemory_mb * 1024 * 1024)]
    assert config("maxmemory-policy") == ["maxmemory-policy", "allkeys-lru"]
    assert config("save") == ["save"]  # no snapshots
    assert config("appendonly") == ["appendonly", "no"]
    assert config("bind") == ["bind", settings.bind]
    if settings.tls:
        assert config("port") == ["port", "0"]  # no plain port
        assert config("tls-port") == ["tls-port", str(PORT)]
    else:
        assert config("port") == ["port", str(PORT)]
        assert config("tls-port") == ["tls-port", "0"]


def test_writes_and_reads_a_key(cli, password):
    assert cli("SET", "hxp:test", "1", "EX", "60", secret=password).rc == 0
    assert cli("GET", "hxp:test", secret=password).stdout.strip() == "1"


def test_exporter_reaches_redis_with_the_password(settings, http_on_host):
    status, metrics = http_on_host(f"http://{settings.exporter}:{EXPORTER_PORT}/metrics")
    assert status == 200, metrics
    assert "redis_up 1" in metrics.splitlines()


@pytest.mark.parametrize(
    ("path", "owner", "mode"),
    [
        ("/etc/redis/redis.conf", "redis", 0o640),
        ("/etc/default/prometheus-redis-exporter", "prometheus", 0o600),
    ],
)
def test_secret_files_are_private(host, path, owner, mode, password):
    secret_file = host.file(path)
    assert (secret_file.user, secret_file.mode) == (owner, mode)
    assert secret_file.mode & 0o007 == 0


def test_the_password_is_never_logged(host, password):
    journal = host.run("journalctl --no-pager -o cat")
    assert journal.rc == 0
    assert password not in journal.stdout


@pytest.mark.parametrize(
    "unit", ["redis-server", "prometheus-redis-exporter", "hxp-certificate-expiry.service"]
)
def test_units_are_hardened(assert_hardened, unit):
    assert_hardened(unit)


@pytest.mark.parametrize(
    "unit", ["redis-server", "prometheus-redis-exporter", "hxp-certificate-expiry.service"]
)
def test_unit_exposure_is_within_the_limit(assert_exposure, unit):
    assert_exposure(unit)


def test_redis_writes_only_its_own_directories(host):
    paths = host.check_output("systemctl show redis-server -p ReadWritePaths").split("=", 1)[1]
    assert sorted(paths.split()) == ["-/run/redis", "-/var/lib/redis"]


@pytest.mark.usefixtures("needs_tls")
def test_the_certificates_expiry_is_exported(assert_certificate_exported):
    assert_certificate_exported("redis", f"{TLS_DIR}/redis.crt")


# Last: it converges the host without TLS and back.
@pytest.mark.usefixtures("needs_tls")
def test_without_tls_the_registration_goes_and_comes_back(
    host, converge, assert_certificate_exported
):
    registered = "/etc/hxp-certificates.d/redis.crt"
    textfile = "/var/lib/hxp-node-exporter/hxp-certificates.prom"
    plain = converge({f"hxp_redis_tls_{name}": "" for name in ("certificate", "key", "ca")})
    assert plain.returncode == 0, plain.stdout[-3000:]
    assert not host.file(registered).exists
    # The path unit exports again as the registration goes.
    gone = host.run(
        "timeout 30 sh -c %s", f"while grep -q 'certificate=\"redis\"' {textfile}; do sleep 1; done"
    )
    assert gone.rc == 0, host.file(textfile).content_string
    tls = converge({})
    assert tls.returncode == 0, tls.stdout[-3000:]
    assert_certificate_exported("redis", f"{TLS_DIR}/redis.crt")
