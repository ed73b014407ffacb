"""Role postgresql on lab hosts: the cluster on one address and port, pg_hba open to the router
from its hosts only (every router host where several run one) and, with database.tls, over TLS
only (a plain connection is refused, one that verifies the server against the CA succeeds), the
router's role writing its usage table, settings sized from memory, the exporter, hardened units,
and a pg_dump backup restored into a fresh database.

On the stack (roles/conftest.py) the clients are the router's hosts, with psql installed there for
these checks; the sizes, the clients and TLS follow the rendered variables."""

import functools
import ipaddress
import shlex
from typing import NamedTuple

import pytest

from hxp_runtime.router.store import SCHEMA

testinfra_hosts = ["database"]

PORT = 5433
EXPORTER_PORT = 9187
DATABASE = "citadel_ai"
ROUTER = "hxp_router"
UNIT = "postgresql@15-main"
TLS_DIR = "/etc/postgresql/15/main/tls"

# The CA the router's host verifies the server with: prepare.yml installs the scenario's; on the
# stack, role router installs database.tls's.
CLIENT_CA = {False: "/etc/ssl/hxp-scenario-ca.crt", True: "/etc/hxp-router/ca/database.crt"}


class Sizing(NamedTuple):
    memory_mb: int
    max_connections: int


@pytest.fixture(scope="module")
def tls(deployed):
    """Whether the deployment set database.tls (the scenario does)."""
    return deployed is None or bool(deployed.get("hxp_postgresql_tls_certificate"))


@pytest.fixture
def needs_tls(tls):
    if not tls:
        pytest.skip("database.tls is not set in this deployment: there is no TLS to check")


@pytest.fixture(scope="module")
def clients(group_hosts, deployed, on_stack):
    """The router's hosts, the only clients pg_hba admits (every one on a deployment with a
    router on several hosts), each with psql."""
    llm = group_hosts("llm")
    if deployed is None:
        routers = llm  # converge.yml admits the scenario's LLM host
    else:
        allowed = [
            ipaddress.ip_network(a, strict=False)
            for a in deployed["hxp_postgresql_allowed_clients"]
        ]
        routers = [
            h
            for h in llm
            if any(ipaddress.ip_address(address_of(h)) in network for network in allowed)
        ]
    assert routers, "no LLM host is among the clients pg_hba admits"
    for router in routers:
        if on_stack and not router.exists("psql"):
            # What the scenario's prepare.yml does: the stack's router connects with its own
            # driver.
            install = router.run(
                "DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "
                "--no-install-recommends postgresql-client-15"
            )
            assert install.rc == 0, install.stdout[-2000:] + install.stderr[-2000:]
    return routers


@pytest.fixture(scope="module")
def client(clients):
    """The first router host: the checks that need one client run from it."""
    return clients[0]


@pytest.fixture(scope="module")
def client_ca(on_stack, tls):
    """The CA file a router host verifies the server with; None without database.tls."""
    return CLIENT_CA[on_stack] if tls else None


@pytest.fixture(scope="module")
def router_psql(client, address, client_ca):
    """router_psql(sql, ...): psql_tcp from the router's host, verifying with its CA (TLS)."""
    return functools.partial(psql_tcp, client, address, ca=client_ca)


@pytest.fixture(scope="module")
def sizing(host, deployed):
    """converge.yml's memory and pools, or what the stack's role sized from (the rendered
    memory, else the host's, as role postgresql's default)."""
    if deployed is None:
        return Sizing(memory_mb=2048, max_connections=20 * 4 + 10)
    memory = deployed.get("hxp_postgresql_memory_mb")
    if memory is None:
        memory = host.ansible("setup", "filter=ansible_memtotal_mb")["ansible_facts"][
            "ansible_memtotal_mb"
        ]
    pools = deployed["hxp_postgresql_pool_size"] * deployed["hxp_postgresql_client_pools"]
    return Sizing(int(memory), pools + deployed.get("hxp_postgresql_reserved_connections", 10))


@pytest.fixture(scope="module")
def password(scenario_secret):
    return scenario_secret("postgres-router-password")


def address_of(testinfra_host):
    return testinfra_host.ansible.get_variables()["ansible_host"]


def psql_tcp(
    on, address, sql, *, ca=None, secret=None, user=ROUTER, database=DATABASE, ssl="prefer"
):
    """psql over TCP to the cluster's address, never prompting (-w); ``ssl``: libpq's sslmode
    (verify-full against ``ca``, a CA file on that host)."""
    env = f"PGPASSWORD={shlex.quote(secret)} " if secret is not None else ""
    env += f"PGSSLMODE={ssl} " + (f"PGSSLROOTCERT={ca} " if ca else "")
    return on.run(
        f"{env}psql -w -XAtq -v ON_ERROR_STOP=1 -h {address} -p {PORT} -U {user} -d {database} "
        f"-c {shlex.quote(sql)}"
    )


def psql_local(host, sql, database=DATABASE):
    return host.check_output(
        "runuser -u postgres -- psql -XAtq -p %s -d %s -c %s", str(PORT), database, sql
    )


@pytest.mark.parametrize(
    "unit", [UNIT, "prometheus-postgres-exporter", "hxp-postgresql-backup.timer"]
)
def test_service_runs_and_is_enabled(host, unit):
    service = host.service(unit)
    assert service.is_running
    assert service.is_enabled


def test_listens_on_the_configured_address_only(host, address):
    listening = host.socket.get_listening_sockets()
    assert [s for s in listening if s.startswith("tcp") and s.endswith(f":{PORT}")] == [
        f"tcp://{address}:{PORT}"
    ]
    assert [s for s in listening if s.endswith(f":{EXPORTER_PORT}")] == [
        f"tcp://{address}:{EXPORTER_PORT}"
    ]
    assert host.socket(f"unix:///var/run/postgresql/.s.PGSQL.{PORT}").is_listening


def test_the_router_needs_its_password(router_psql, password):
    anonymous = router_psql("SELECT 1")
    assert anonymous.rc != 0
    assert "no password supplied" in anonymous.stderr
    wrong = router_psql("SELECT 1", secret="not-it")  # noqa: S106 - wrong on purpose
    assert wrong.rc != 0
    assert f'password authentication failed for user "{ROUTER}"' in wrong.stderr
    right = router_psql("SELECT current_user", secret=password)
    assert right.rc == 0, right.stderr
    assert right.stdout.strip() == ROUTER


def test_pg_hba_admits_only_the_router_from_its_hosts(
    host, clients, address, router_psql, password, tls, client_ca
):
    # The right password from the database host itself: no rule matches its address.
    from_elsewhere = psql_tcp(host, address, "SELECT 1", secret=password)
    assert from_elsewhere.rc != 0
    assert "no pg_hba.conf entry" in from_elsewhere.stderr
    # The router's host, but another database or another user: refused too.
    other_db = router_psql("SELECT 1", secret=password, database="postgres")
    assert "no pg_hba.conf entry" in other_db.stderr
    superuser = router_psql("SELECT 1", secret=password, user="postgres")
    assert "no pg_hba.conf entry" in superuser.stderr
    # Every router host is admitted, as itself.
    for client in clients:
        admitted = psql_tcp(client, address, "SELECT current_user", secret=password, ca=client_ca)
        assert admitted.rc == 0, admitted.stderr
    hba = host.file("/etc/postgresql/15/main/pg_hba.conf")
    assert (hba.user, hba.mode) == ("postgres", 0o640)
    rules = [line.split() for line in hba.content_string.splitlines() if line and line[0] != "#"]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["local", "all", "prometheus", "peer"],
        *(
            [
                "hostssl" if tls else "host",
                DATABASE,
                ROUTER,
                f"{address_of(c)}/32",
                "scram-sha-256",
            ]
            for c in clients
        ),
    ]


@pytest.mark.usefixtures("needs_tls")
def test_a_plain_connection_is_refused(router_psql, password):
    plain = router_psql("SELECT 1", secret=password, ssl="disable")
    assert plain.rc != 0
    assert "no pg_hba.conf entry" in plain.stderr
    assert "no encryption" in plain.stderr


@pytest.mark.usefixtures("needs_tls")
def test_tls_verified_against_the_ca_is_admitted(router_psql, password):
    verified = router_psql(
        "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        secret=password,
        ssl="verify-full",
    )
    assert verified.rc == 0, verified.stderr
    encrypted, version = verified.stdout.strip().split("|")
    assert encrypted == "t"
    assert version in {"TLSv1.2", "TLSv1.3"}


@pytest.mark.parametrize(
    ("path", "mode"),
    [(TLS_DIR, 0o700), (f"{TLS_DIR}/server.crt", 0o644), (f"{TLS_DIR}/server.key", 0o600)],
)
@pytest.mark.usefixtures("needs_tls")
def test_the_tls_files_are_postgres_own(host, path, mode):
    installed = host.file(path)
    assert (installed.user, installed.group, installed.mode) == ("postgres", "postgres", mode)


def test_the_router_writes_its_usage_table(router_psql, password):
    insert = router_psql(
        "INSERT INTO hxp_usage (period_start, period_end, key_name, model, requests, errors,"
        " prompt_tokens, completion_tokens) VALUES (now() - interval '5 s', now(), 'admin',"
        " 'hermes', 3, 0, 120, 480) RETURNING completion_tokens",
        secret=password,
    )
    assert insert.rc == 0, insert.stderr
    assert insert.stdout.strip() == "480"
    key = router_psql(
        "INSERT INTO hxp_api_keys (name, key_hash, key_prefix, source)"
        " VALUES ('molecule-' || gen_random_uuid(), md5(random()::text), 'hxp-test', 'cli')",
        secret=password,
    )
    assert key.rc == 0, key.stderr


def test_the_routers_own_schema_check_passes(router_psql, password):
    # What the router runs at start-up, as itself: the tables are its own, so it is a no-op.
    startup = router_psql(SCHEMA, secret=password)
    assert startup.rc == 0, startup.stderr


def test_the_router_is_no_superuser(router_psql, password):
    attributes = router_psql(
        "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user",
        secret=password,
    )
    assert attributes.stdout.strip() == "f|f|f"
    secrets = router_psql("SELECT rolpassword FROM pg_authid", secret=password)
    assert "permission denied" in secrets.stderr


def test_settings_follow_memory_and_pool(host, address, sizing):
    def show(name):
        return psql_local(host, f"SHOW {name}").strip()

    def mib(name):
        return int(psql_local(host, f"SELECT pg_size_bytes(current_setting('{name}'))")) >> 20

    # shared_buffers 1/4 of memory, effective_cache_size 3/4, maintenance_work_mem 1/16 (at most
    # 2 GiB), work_mem what shared_buffers leaves over 3 sorts per connection (4-256 MiB).
    # converge.yml: 2048 MiB and 20 x 4 pools + 10 connections, so work_mem 5 MiB.
    memory, connections = sizing
    assert mib("shared_buffers") == memory // 4
    assert mib("effective_cache_size") == memory * 3 // 4
    assert mib("maintenance_work_mem") == min(memory // 16, 2048)
    assert mib("work_mem") == min(max((memory - memory // 4) // (connections * 3), 4), 256)
    assert int(show("max_connections")) == connections
    assert show("listen_addresses") == address
    assert show("port") == str(PORT)
    assert show("password_encryption") == "scram-sha-256"


def test_the_password_is_stored_as_scram_and_never_logged(host, password):
    stored = psql_local(host, "SELECT rolpassword FROM pg_authid WHERE rolname = 'hxp_router'")
    assert stored.startswith("SCRAM-SHA-256$4096:")
    assert password not in host.run("journalctl --no-pager -o cat").stdout
    assert password not in host.run("cat /var/log/postgresql/*.log").stdout


def test_exporter_reads_postgres(host, address):
    metrics = host.check_output(
        "python3 -c 'import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' %s",
        f"http://{address}:{EXPORTER_PORT}/metrics",
    )
    assert "pg_up 1" in metrics.splitlines()


TABLE_DIGEST = (
    "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t.id)), '')"
    " FROM {table} t"
)


def test_backup_restores_into_a_fresh_database_with_the_same_rows(host):
    run = host.run("systemctl start hxp-postgresql-backup.service")
    assert run.rc == 0, host.run("journalctl -u hxp-postgresql-backup --no-pager").stdout
    dumps = sorted(host.check_output("ls /var/backups/hxp/postgresql").split())
    assert dumps, "the backup wrote no dump"
    dump = f"/var/backups/hxp/postgresql/{dumps[-1]}"
    assert host.file(dump).user == "postgres"
    assert host.file(dump).mode == 0o600

    restored = "citadel_ai_restore_test"
    host.run(f"runuser -u postgres -- dropdb -p {PORT} --if-exists {restored}")
    restore = host.run(f"hxp-postgresql-restore {dump} {restored}")
    assert restore.rc == 0, restore.stderr
    try:
        for table in ("hxp_usage", "hxp_api_keys"):
            original = psql_local(host, TABLE_DIGEST.format(table=table))
            copy = psql_local(host, TABLE_DIGEST.format(table=table), database=restored)
            assert copy == original
            assert not original.startswith("0:"), f"{table} is empty: nothing was compared"
        # Never over an existing database.
        again = host.run(f"hxp-postgresql-restore {dump} {restored}")
        assert again.rc == 1
        assert "exists" in again.stderr
    finally:
        host.run(f"runuser -u postgres -- dropdb -p {PORT} {restored}")


HXP_UNITS = [
    UNIT,
    "prometheus-postgres-exporter",
    "hxp-postgresql-backup.service",
    "hxp-certificate-expiry.service",
]


@pytest.mark.parametrize("unit", HXP_UNITS)
def test_units_are_hardened(assert_hardened, unit):
    assert assert_hardened(unit, "User")["User"] in {"postgres", "prometheus"}


@pytest.mark.parametrize("unit", HXP_UNITS)
def test_unit_exposure_is_within_the_limit(assert_exposure, unit):
    assert_exposure(unit)


@pytest.mark.usefixtures("needs_tls")
def test_the_certificates_expiry_is_exported(assert_certificate_exported):
    assert_certificate_exported("postgresql", f"{TLS_DIR}/server.crt")
