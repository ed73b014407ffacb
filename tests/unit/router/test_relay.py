"""Relaying answers to a real client through a real aiohttp server, from real loopback backends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

from hxp_runtime.router import relay
from hxp_runtime.router.relay import BACKEND_HEADER, STREAM_ERROR_EVENT, Streamed
from hxp_runtime.router.strategies import Backend
from tests.unit.router.test_attempts import Setup
from tests.unit.router.test_pipeline import counted
from tests.unit.router.test_upstream import CHUNKED_HEAD, ok, server

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def event(n: int) -> bytes:
    return b'data: {"choices": [{"delta": {"content": "%d"}}]}\n\n' % n


def chunked(*pieces: bytes) -> list[bytes]:
    """A chunked SSE answer, one chunk per piece, written one after the other."""
    return [CHUNKED_HEAD, *(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces), b"0\r\n\r\n"]


@asynccontextmanager
async def gateway(setup: Setup) -> AsyncIterator[tuple[str, list[Streamed]]]:
    """A server that relays every request's stream from ``setup``'s backends."""
    relayed: list[Streamed] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        started = asyncio.get_running_loop().time()
        answer = await setup.attempt({"model": "primary", "stream": True})
        sink = relay.AiohttpSink(request)
        relayed.append(await relay.stream(sink, answer, started, setup.metrics))
        return sink.response

    async with serving(handle) as url:
        yield url, relayed
    setup.close()


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """``handler`` behind aiohttp on loopback, set up as the router's workers set it up (a
    client that leaves does not cancel the handler, unlike aiohttp's TestServer)."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        await runner.cleanup()


async def post(url: str) -> tuple[aiohttp.ClientResponse, bytes]:
    async with aiohttp.ClientSession() as session, session.post(url, json={}) as response:
        return response, await response.read()


# --------------------------------------------------------------------------- buffered


async def test_a_buffered_answer_keeps_status_body_and_content_type() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
    async with server(head + b"content-length: 2\r\n\r\n{}") as (url, _, _):
        setup = Setup([url])
        answer = await setup.attempt({"model": "primary"})
        setup.close()
    response = relay.buffered(answer)
    assert (response.status, response.body) == (200, b"{}")
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert response.headers[BACKEND_HEADER] == "primary"


# vLLM's ErrorResponse (vllm/entrypoints/serve/engine/protocol.py) as its JSONResponse sends it.
VLLM_CONTEXT_ERROR = (
    b'{"error":{"message":"This model\'s maximum context length is 2048 tokens. However, you '
    b'requested 4096 tokens in the messages, Please reduce the length of the messages.",'
    b'"type":"BadRequestError","param":null,"code":400}}'
)


@pytest.mark.parametrize(
    ("status_line", "content_type", "body", "expected"),
    [
        (
            b"400 Bad Request",
            b"application/json",
            VLLM_CONTEXT_ERROR,
            (400, "invalid_request_error", "upstream_error", "maximum context length is 2048"),
        ),
        (
            b"404 Not Found",
            b"application/json",
            b'{"error":{"message":"The model `gpt-9` does not exist.","type":"NotFoundError",'
            b'"param":"model","code":404}}',
            (404, "invalid_request_error", "upstream_error", "The model `gpt-9` does not exist."),
        ),
        (
            b"422 Unprocessable Entity",
            b"application/json",
            b'{"detail":[{"loc":["body","messages"],"msg":"Field required"}]}',
            (422, "invalid_request_error", "upstream_error", "Field required"),
        ),
        (
            b"429 Too Many Requests",
            b"text/plain",
            b"slow down, the queue is full\n",
            (429, "rate_limit_error", "upstream_error", "slow down, the queue is full"),
        ),
        (
            b"401 Unauthorized",
            b"application/json",
            b'{"error":"Unauthorized"}',
            (502, "server_error", "upstream_auth_failed", "HTTP 401: Unauthorized"),
        ),
        (
            b"400 Bad Request",
            b"text/plain",
            b"rejected: authorization: Bearer upstream-secret-0123456789",
            (400, "invalid_request_error", "upstream_error", "authorization: Bearer [redacted]"),
        ),
    ],
)
async def test_a_backend_error_reaches_the_client_in_the_routers_shape(
    status_line: bytes, content_type: bytes, body: bytes, expected: tuple[int, str, str, str]
) -> None:
    head = b"HTTP/1.1 %b\r\ncontent-type: %b\r\n" % (status_line, content_type)
    async with server(head + b"content-length: %d\r\n\r\n%b" % (len(body), body)) as (url, _, _):
        setup = Setup([url])
        answer = await setup.attempt({"model": "primary"})
        setup.close()
    response = relay.buffered(answer)
    assert isinstance(response.body, bytes)
    error = json.loads(response.body)["error"]
    status, kind, code, message = expected
    assert (response.status, error["type"], error["code"]) == (status, kind, code)
    assert message in error["message"] and "upstream-secret" not in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers[BACKEND_HEADER] == "primary"


def test_a_cached_answer_says_so_and_names_its_backend() -> None:
    backend = Backend("coder-2", "coder", "coder", "generate", "http://127.0.0.1:1")
    response = relay.cached(b'{"cached": true}', backend)
    assert (response.status, response.body) == (200, b'{"cached": true}')
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers[BACKEND_HEADER] == "coder-2"
    assert response.headers["x-hxp-cache"] == "hit"


# --------------------------------------------------------------------------- streams


async def test_a_stream_is_passed_through_byte_for_byte() -> None:
    events = [event(n) for n in range(4)] + [b"data: [DONE]\n\n"]
    async with (
        server(chunked(*events)) as (upstream, _, _),
        gateway(setup := Setup([upstream])) as (url, relayed),
    ):
        response, body = await post(url)
    assert body == b"".join(events)
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers[BACKEND_HEADER] == "primary"
    (streamed,) = relayed
    # No usage in the stream: one token per event, less the first and the [DONE].
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (0, 3)
    assert not streamed.failed and streamed.ttft is not None
    live = setup.live["primary"]
    assert live.stats.outstanding == 0 and live.stats.latency_ms is not None


async def test_a_stream_s_usage_is_read_from_its_end() -> None:
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}\n\n'
    events = [event(0), event(1), usage, b"data: [DONE]\n\n"]
    async with (
        server(chunked(*events)) as (upstream, _, _),
        gateway(Setup([upstream])) as (url, relayed),
    ):
        _, body = await post(url)
    assert body == b"".join(events)
    assert (relayed[0].prompt_tokens, relayed[0].completion_tokens) == (7, 2)


VLLM_STREAM_ERROR = (
    b'data: {"error": {"message": "Engine died: out of KV cache blocks", '
    b'"type": "InternalServerError", "param": null, "code": 500}}\n\n'
)


@pytest.mark.parametrize(
    "events",
    [
        [event(0), event(1) + VLLM_STREAM_ERROR + b"data: [DONE]\n\n"],  # a later piece
        [event(0) + event(1) + VLLM_STREAM_ERROR, b"data: [DONE]\n\n"],  # the first piece
    ],
)
async def test_a_backends_error_event_in_a_stream_is_passed_on_in_the_routers_shape(
    events: list[bytes],
) -> None:
    async with (
        server(chunked(*events)) as (upstream, _, _),
        gateway(Setup([upstream])) as (url, _),
    ):
        response, body = await post(url)
    assert response.status == 200
    first, second, error_event, done, _ = body.split(b"\n\n")
    assert (first + b"\n\n", second + b"\n\n", done) == (event(0), event(1), b"data: [DONE]")
    assert json.loads(error_event.removeprefix(b"data: ")) == {
        "error": {
            "message": "Engine died: out of KV cache blocks",
            "type": "server_error",
            "param": None,
            "code": "upstream_error",
        }
    }


async def test_a_backend_failing_mid_stream_ends_it_with_an_error_event() -> None:
    wire = chunked(event(0), event(1))[:-1]  # no final chunk: the backend dies
    async with (
        server(wire, close_after=True) as (upstream, _, _),
        gateway(setup := Setup([upstream])) as (url, relayed),
    ):
        response, body = await post(url)
    assert response.status == 200  # committed before the failure
    assert body == event(0) + event(1) + STREAM_ERROR_EVENT
    error = json.loads(STREAM_ERROR_EVENT.removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_failed"
    assert relayed[0].failed
    assert counted(setup.metrics, "hxp_router_upstream_failures_total") == {
        '{"backend": "primary", "model": "primary", "reason": "reset"}': 1.0
    }
    live = setup.live["primary"]
    assert live.stats.outstanding == 0 and live.stats.error_rate > 0


async def test_a_client_leaving_mid_stream_stops_it_without_blaming_the_backend() -> None:
    events = [event(n) for n in range(200)]
    async with (
        server(chunked(*events)) as (upstream, _, _),
        gateway(setup := Setup([upstream])) as (url, relayed),
    ):
        async with aiohttp.ClientSession() as session, session.post(url, json={}) as response:
            assert await response.content.readuntil(b"\n\n") == event(0)
        # The client is gone; the relay notices at the next piece.
        for _ in range(200):
            if relayed:
                break
            await asyncio.sleep(0.01)
    (streamed,) = relayed
    assert streamed.failed and streamed.completion_tokens < 198
    assert counted(setup.metrics, "hxp_router_upstream_failures_total") == {}
    live = setup.live["primary"]
    assert live.stats.outstanding == 0 and live.stats.error_rate == 0


async def test_an_http_1_0_client_gets_the_stream_unframed() -> None:
    events = [event(0), event(1), event(2)]
    async with (
        server(chunked(*events)) as (upstream, _, _),
        gateway(Setup([upstream])) as (url, _),
    ):
        port = int(url.split(":")[2].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )
        raw = await reader.read()  # HTTP/1.0: the body ends with the connection
        writer.close()
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head.lower()
    assert body == b"".join(events)


async def test_a_buffered_answer_over_the_wire() -> None:
    async with server(ok(b'{"id": "x"}')) as (upstream, _, _):
        setup = Setup([upstream])
        answer = await setup.attempt({"model": "primary"})
        setup.close()

    async def handle(request: web.Request) -> web.Response:
        return relay.buffered(answer)

    async with serving(handle) as url:
        response, body = await post(url)
    assert (response.status, body) == (200, b'{"id": "x"}')
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers[BACKEND_HEADER] == "primary"
