"""The gateway's endpoints in one process: its aiohttp app on loopback before a fake vLLM."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hxp_runtime.router.app import Gateway
from hxp_runtime.router.settings import RouterSecrets, RouterSettings
from tests.unit.router.test_pipeline import counted

KEY = "handlers-static-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def gateway(backend: str) -> AsyncIterator[tuple[Gateway, str]]:
    settings = RouterSettings.model_validate(
        {
            "backends": [
                {
                    "name": "chat",
                    "served_name": "chat-v1",
                    "aliases": ["talker"],
                    "url": backend,
                    "slo": {"latency_ms": 1000, "throughput_rps": 10},
                }
            ],
            "health_check": {"enabled": False},
        }
    )
    secrets = RouterSecrets.model_validate({"api_keys": [{"name": "admin", "secret": KEY}]})
    gateway = Gateway(settings, secrets)
    runner = web.AppRunner(gateway.build_app(), access_log=None)
    await runner.setup()  # starts the gateway
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield gateway, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()  # stops it


async def call(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers) as response,
    ):
        return response.status, dict(response.headers), await response.read()


async def test_a_proxied_request_is_answered_counted_and_accounted(
    gateway: tuple[Gateway, str],
) -> None:
    gw, url = gateway
    body = {"model": "talker", "messages": [{"role": "user", "content": "hello"}]}
    status, headers, answer = await call("POST", url + "/v1/chat/completions", body, AUTH)
    assert status == 200 and headers["x-hxp-backend"] == "chat"
    assert json.loads(answer)["model"] == "chat-v1"  # the alias went out as the served name
    requests = counted(gw.metrics, "hxp_router_requests_total")
    assert requests == {'{"backend": "chat", "model": "chat", "status": "200"}': 1.0}
    rows = gw.usage.take_rows()
    assert [row[2:] for row in rows] == [("admin", "chat", 1, 0, 5, 3)]


async def test_refusals_are_answered_and_counted_by_the_router(
    gateway: tuple[Gateway, str],
) -> None:
    gw, url = gateway
    chat = url + "/v1/chat/completions"
    assert (await call("POST", chat, {"model": "chat"}))[0] == 401
    status, _, body = await call("POST", chat, {"model": "gpt-4"}, AUTH)
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
    requests = counted(gw.metrics, "hxp_router_requests_total")
    assert requests == {
        '{"backend": "", "model": "", "status": "401"}': 1.0,
        '{"backend": "", "model": "", "status": "404"}': 1.0,
    }
    assert gw.usage.take_rows() == []


async def test_a_draining_gateway_refuses_new_requests(gateway: tuple[Gateway, str]) -> None:
    gw, url = gateway
    gw.draining = True
    status, _, body = await call("POST", url + "/v1/chat/completions", {"model": "chat"}, AUTH)
    assert status == 503 and json.loads(body)["error"]["code"] == "draining"
    assert json.loads((await call("GET", url + "/health"))[2]) == {"status": "draining"}
    status, _, ready = await call("GET", url + "/ready")
    assert status == 503 and json.loads(ready)["draining"] is True


async def test_models_lists_every_name_and_auto_for_a_known_key(
    gateway: tuple[Gateway, str],
) -> None:
    _, url = gateway
    assert (await call("GET", url + "/v1/models"))[0] == 401
    status, _, body = await call("GET", url + "/v1/models", headers=AUTH)
    assert status == 200
    listed = {m["id"]: m["root"] for m in json.loads(body)["data"]}
    assert listed == {"chat": "chat-v1", "chat-v1": "chat-v1", "talker": "chat-v1", "auto": "auto"}


async def test_plain_endpoints(gateway: tuple[Gateway, str]) -> None:
    _, url = gateway
    assert json.loads((await call("GET", url + "/health"))[2]) == {"status": "ok"}
    status, _, ready = await call("GET", url + "/ready")
    assert status == 200 and json.loads(ready)["backends"] == {"chat": True}
    status, headers, spec = await call("GET", url + "/openapi.json")
    assert status == 200 and "/v1/chat/completions" in json.loads(spec)["paths"]
    status, headers, exposition = await call("GET", url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"# HELP hxp_router_requests_total " in exposition
