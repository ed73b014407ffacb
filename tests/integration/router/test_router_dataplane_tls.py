"""The router's connections to PostgreSQL and Redis over TLS (hxp.yml database.tls, cache.tls):
the real daemon in front of ``benchmarks/fast_backend.py``, with real servers on loopback that
serve TLS only (tests/dataplane.py, as the roles configure them) and certificates from a CA made
by the lab's code (hxp_runtime.certs).

The router verifies both servers with the CA (a connection it made shows up in pg_stat_ssl; its
rate limits land in Redis), plain connections are refused by both servers, and a router that
trusts another CA does not start, saying why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from hxp_runtime.certs import create_ca, issue, write_private
from tests.dataplane import (
    Postgres,
    Redis,
    ServerTls,
    ServiceMissing,
    free_port,
    postgres_server,
    redis_server,
)
from tests.integration.router.conftest import RouterProcess, call, fast_backend

pytestmark = pytest.mark.slow

KEY = "hxp-dataplane-tls-key-0123456789"
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


@dataclass(frozen=True)
class TlsDataplane:
    postgres: Postgres
    redis: Redis
    ca: Path
    other_ca: Path  # a CA that issued neither server's certificate


@pytest.fixture(scope="module")
def dataplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsDataplane]:
    directory = tmp_path_factory.mktemp("dataplane-tls")
    ca = create_ca("hxp test CA")
    (directory / "ca.crt").write_bytes(ca.certificate)
    (directory / "other.crt").write_bytes(create_ca("another CA").certificate)
    files = {}
    for name in ("postgresql", "redis"):
        pair = issue(ca, "localhost", [LOOPBACK])
        files[name] = ServerTls(
            directory / f"{name}.crt", directory / f"{name}.key", directory / "ca.crt"
        )
        files[name].certificate.write_bytes(pair.certificate)
        write_private(files[name].key, pair.key)
    try:
        with (
            postgres_server(tls=files["postgresql"]) as pg,
            redis_server(tls=files["redis"]) as cache,
        ):
            yield TlsDataplane(pg, cache, directory / "ca.crt", directory / "other.crt")
    except ServiceMissing as missing:
        pytest.skip(str(missing))


def router_process(
    dataplane: TlsDataplane, backend_port: int, directory: Path, ca: Path
) -> RouterProcess:
    pg, cache = dataplane.postgres, dataplane.redis
    settings = {
        "listen_host": "127.0.0.1",
        "port": free_port(),
        "workers": 1,
        "drain_timeout_s": 5,
        "backends": [fast_backend(backend_port)],
        "database": {
            "host": pg.host,
            "port": pg.port,
            "name": pg.database,
            "user": pg.user,
            "ca_file": str(ca),
        },
        "redis": {"host": cache.host, "port": cache.port, "ca_file": str(ca)},
    }
    secrets = {
        "api_keys": [{"name": "tls", "secret": KEY, "requests_per_minute": 1000}],
        "database_password": pg.password,
        "redis_password": cache.password,
    }
    return RouterProcess(settings, secrets, directory)


@pytest.fixture(scope="module")
def router(
    dataplane: TlsDataplane, backend_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RouterProcess]:
    process = router_process(
        dataplane, backend_port, tmp_path_factory.mktemp("router"), dataplane.ca
    )
    process.start()
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


def superuser_sql(pg: Postgres, sql: str) -> str:
    """``sql`` as the superuser over the cluster's socket (as the postgresql role's psql)."""
    assert pg.socket_dir is not None
    command = ["psql", "-XAtq", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", "postgres"]
    done = subprocess.run([*command, "-c", sql], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_router_uses_both_servers_over_verified_tls(
    router: RouterProcess, dataplane: TlsDataplane
) -> None:
    body = {"model": "fast", "prompt": "hello", "max_tokens": 4}
    status, _, _ = call("POST", router.url + "/v1/completions", body, key=KEY)
    assert status == 200, router.log_tail()
    # Every connection of the router's role is encrypted ...
    encrypted = superuser_sql(
        dataplane.postgres,
        "select count(*) filter (where s.ssl), count(*) from pg_stat_activity a "
        f"join pg_stat_ssl s using (pid) where a.usename = '{dataplane.postgres.user}'",
    )
    used, total = map(int, encrypted.split("|"))
    assert used == total >= 1
    # ... and the request's rate limit went through Redis (over its TLS port, the only one).
    assert int(dataplane.redis.cli("DBSIZE")) >= 1


def test_postgresql_refuses_a_plain_connection(dataplane: TlsDataplane) -> None:
    pg = dataplane.postgres

    async def plain() -> None:
        conn = await asyncpg.connect(pg.dsn, ssl=False, timeout=10)
        await conn.close()

    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        asyncio.run(plain())


def test_redis_refuses_a_plain_connection(dataplane: TlsDataplane) -> None:
    cache = dataplane.redis

    async def plain() -> None:
        client = aioredis.Redis(
            host=cache.host, port=cache.port, password=cache.password, socket_timeout=5
        )
        try:
            await client.ping()
        finally:
            await client.aclose()

    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        asyncio.run(plain())


def test_a_router_trusting_another_ca_does_not_start(
    dataplane: TlsDataplane, backend_port: int, tmp_path: Path
) -> None:
    process = router_process(dataplane, backend_port, tmp_path, dataplane.other_ca)
    process.write()
    spawned = process.spawn()
    assert spawned.wait(timeout=60) != 0
    log = process.log_path.read_text()
    assert "start-up failed: TLS to PostgreSQL at 127.0.0.1" in log
    assert "certificate verify failed" in log
    assert dataplane.postgres.password not in log
