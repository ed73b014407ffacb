"""Fixtures of the router's unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

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
