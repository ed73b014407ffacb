"""Fixtures of the router's unit tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hxp_runtime.router.app import Gateway
from hxp_runtime.router.settings import RouterSecrets, RouterSettings

USAGE = {"prompt_tokens": 5, "completion_tokens": 3}


@pytest.fixture
async def backend() -> AsyncIterator[str]:
    """A vLLM-shaped server: health, metrics and chat completions with usage."""

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text='vllm:num_requests_running{model_name="chat-v1"} 0.0\n')

    async def complete(request: web.Request) -> web.Response:
        body = await request.json()
        answer = {"model": body["model"], "choices": [{"text": "hi"}], "usage": USAGE}
        return web.json_response(answer)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", complete)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


def one_backend_gateway(url: str, key: str, served_name: str = "chat", **extra: Any) -> Gateway:
    """A gateway (not started) with one backend ``chat`` at ``url`` and one static key ``k``:
    no health checks, no load polls for an hour, no retries; ``extra`` settings on top."""
    settings = RouterSettings.model_validate(
        {
            "backends": [
                {
                    "name": "chat",
                    "served_name": served_name,
                    "url": url,
                    "slo": {"latency_ms": 1000, "throughput_rps": 10},
                }
            ],
            "health_check": {"enabled": False},
            "load_poll_interval_s": 3600,
            "retries": {"attempts": 0},
            **extra,
        }
    )
    secrets = RouterSecrets.model_validate({"api_keys": [{"name": "k", "secret": key}]})
    return Gateway(settings, secrets)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head and its Content-Length body, off a raw backend's connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


async def close_backend(server: asyncio.Server, writers: set[asyncio.StreamWriter]) -> None:
    """Close a stand-in backend and every connection it still holds before the test's loop
    ends: a connection left to the garbage collector is reported as a ResourceWarning in
    whichever later test runs then (CI saw one in the router's integration tests)."""
    server.close()
    for writer in list(writers):
        writer.close()
    for writer in list(writers):
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    await server.wait_closed()
    await asyncio.sleep(0)  # the handlers see their connections end and return
