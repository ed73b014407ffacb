"""TLS on the router's public port (hxp.yml router.tls), tried as a client does from the
controller, and between the router and its data plane (database.tls, cache.tls), tried from the
router's host with the router's own code and files: its installed hxp_runtime, its settings and
its secrets file (read there as root, so no password crosses the connection or a command line).

PostgreSQL must refuse a plain connection (pg_hba has hostssl lines only) and accept one with
sslmode=verify-full against the CA; Redis has no plain port and accepts a verified TLS one.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request

import openai
import pytest
import testinfra

from hxp_runtime.config import HostGroup, HxpConfig
from tests.stack.conftest import host_in, secret
from tests.stack.router import openai_client, router_url

Hosts = dict[str, testinfra.host.Host]

ROUTER_PYTHON = "/opt/hxp/router/bin/python"

# Run by the router's Python on its host: each connection as the router opens it (verified TLS,
# from its settings) and the same without TLS; prints {"verified": ..., "plain": ...}, each
# "ok" or the exception's class and message (never a secret: the message names the server).
PROBE = r"""
import asyncio, json, sys
from pathlib import Path
import asyncpg
import redis.asyncio as aioredis
from hxp_runtime.router import store
from hxp_runtime.router.settings import load_secrets, load_settings
from hxp_runtime.router.tls import redis_tls_kwargs

settings = load_settings(Path("/etc/hxp-router/settings.yml"))
secrets = load_secrets(Path("/etc/hxp-router/secrets.yml"))

async def postgresql(tls):
    db = settings.database if tls else settings.database.model_copy(update={"ca_file": None})
    conn = await asyncpg.connect(**store.connect_kwargs(
        db, secrets.database_password.get_secret_value()))
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()

async def redis(tls):
    r = settings.redis
    client = aioredis.Redis(
        host=r.host, port=r.port, password=secrets.redis_password.get_secret_value(),
        socket_timeout=5, socket_connect_timeout=5,
        **redis_tls_kwargs(r.ca_file if tls else None))
    try:
        assert await client.ping()
    finally:
        await client.aclose()

async def attempt(connect, tls):
    try:
        await asyncio.wait_for(connect(tls), 15)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"

async def main():
    connect = {"postgresql": postgresql, "redis": redis}[sys.argv[1]]
    print(json.dumps({"verified": await attempt(connect, True),
                      "plain": await attempt(connect, False)}))

asyncio.run(main())
"""


def probe(router: testinfra.host.Host, service: str) -> dict[str, str]:
    out = router.check_output(f"{ROUTER_PYTHON} -c %s %s", PROBE, service)
    result: dict[str, str] = json.loads(out)
    print(service, result)
    return result


@pytest.fixture(scope="module")
def router(cfg: HxpConfig, hosts: Hosts) -> testinfra.host.Host:
    return host_in(cfg, hosts, HostGroup.LLM)


def test_postgresql_refuses_plain_tcp_and_accepts_verified_tls(
    cfg: HxpConfig, router: testinfra.host.Host
) -> None:
    assert cfg.database is not None and cfg.database.tls is not None, "database.tls is off"
    result = probe(router, "postgresql")
    assert result["verified"] == "ok"
    # pg_hba has hostssl lines only: the plain attempt matches none.
    assert "no pg_hba.conf entry" in result["plain"]
    assert "no encryption" in result["plain"]


def test_redis_refuses_plain_tcp_and_accepts_verified_tls(
    cfg: HxpConfig, router: testinfra.host.Host
) -> None:
    assert cfg.cache is not None and cfg.cache.tls is not None, "cache.tls is off"
    result = probe(router, "redis")
    assert result["verified"] == "ok"
    # The TLS port drops a client that speaks RESP in the clear: no reply, a closed connection.
    assert result["plain"] != "ok"
    assert "ConnectionError" in result["plain"] or "TimeoutError" in result["plain"]


def test_redis_listens_on_loopback_only_beside_the_router(
    cfg: HxpConfig, hosts: Hosts, router: testinfra.host.Host
) -> None:
    assert cfg.cache is not None
    cache = host_in(cfg, hosts, HostGroup.CACHE)
    if cache.backend.get_hostname() != router.backend.get_hostname():
        pytest.skip("Redis runs on another host than the router")
    address = cfg.host(cache.backend.get_hostname()).address
    assert cache.socket(f"tcp://127.0.0.1:{cfg.cache.port}").is_listening
    assert not cache.socket(f"tcp://{address}:{cfg.cache.port}").is_listening


def test_the_openai_client_verifies_the_router_against_the_lab_ca(cfg: HxpConfig) -> None:
    assert cfg.router.tls is not None, "router.tls is off"
    key = secret(cfg.router.api_keys[0].secret.value)
    with openai_client(cfg, key, timeout=30, max_retries=0) as client:
        served = {m.id for m in client.models.list()}
    assert {m.routing_name for m in cfg.models} <= served
    # The same request from a client that trusts only the system's CAs fails the handshake.
    stranger = openai.OpenAI(
        base_url=f"{router_url(cfg)}/v1", api_key=key, timeout=30, max_retries=0
    )
    with stranger, pytest.raises(openai.APIConnectionError) as raised:
        stranger.models.list()
    cause = raised.value.__cause__
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, ssl.SSLCertVerificationError), repr(raised.value)


def test_plain_http_to_the_public_port_gets_no_http_answer(cfg: HxpConfig) -> None:
    """Refused, not redirected (README, "TLS on the router's public port"): the TLS handshake
    fails on the request's first bytes and the connection closes without a response."""
    assert cfg.router.tls is not None, "router.tls is off"
    plain = router_url(cfg).replace("https://", "http://", 1)
    refused = (http.client.HTTPException, ConnectionError, urllib.error.URLError)
    with pytest.raises(refused), urllib.request.urlopen(f"{plain}/health", timeout=20) as answer:
        pytest.fail(f"plain HTTP got an answer: {answer.status}")
