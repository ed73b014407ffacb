"""The router's edge under hostile input: a real gateway on loopback, its real logging, and a
backend that counts the connections it gets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from hxp_runtime.router.edge import EdgeRunner, configure_logging
from hxp_runtime.router.front import FrontRunner
from tests.unit.router.conftest import close_backend, one_backend_gateway, read_request

KEY = "edge-static-key-" + secrets.token_urlsafe(24)
LIMIT = 1024 * 1024
CHAT = "/v1/chat/completions"
# vLLM's ErrorResponse (vllm/entrypoints/serve/engine/protocol.py) as its JSONResponse sends it.
VLLM_SERVER_ERROR = (
    b'{"error":{"message":"EngineCore encountered an issue. See stack trace for the root '
    b'cause.","type":"InternalServerError","param":null,"code":500}}'
)
OK_BODY = b'{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 1}}'


@dataclass
class Backend:
    """A vLLM stand-in that counts its connections and the POSTs it answered."""

    url: str = ""
    writers: set[asyncio.StreamWriter] = field(default_factory=set)  # its open connections
    connections: int = 0
    posts: list[bytes] = field(default_factory=list)
    answer: tuple[bytes, bytes, bytes] = (b"200 OK", b"application/json", OK_BODY)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.connections += 1
        try:
            while True:
                head, body = await read_request(reader)
                status, content_type = b"200 OK", b"text/plain"
                answer = b""
                if head.startswith(b"POST"):
                    self.posts.append(body)
                    status, content_type, answer = self.answer
                writer.write(
                    b"HTTP/1.1 %b\r\ncontent-type: %b\r\ncontent-length: %d\r\n\r\n%b"
                    % (status, content_type, len(answer), answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@pytest.fixture
def daemon_log() -> Iterator[io.StringIO]:
    """What the daemon's logging (server.main's) writes, at its most talkative level."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("DEBUG", journal=False, stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.fixture(params=["front", "aiohttp"])
async def edge(
    request: pytest.FixtureRequest, daemon_log: io.StringIO
) -> AsyncIterator[tuple[str, Backend]]:
    """The gateway as the daemon serves it (the front, aiohttp for the rest), and on aiohttp's
    server alone (as the admin API is served): every hostile request gets the same answer."""
    backend = Backend()
    upstream = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    backend.url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    gateway = one_backend_gateway(backend.url, KEY, "chat-v1", max_body_bytes=LIMIT)
    app = gateway.build_app()
    runner = (
        FrontRunner(app, gateway, access_log=None)
        if request.param == "front"
        else EdgeRunner(app, access_log=None)
    )
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        # The load monitor's first poll opens a connection of its own; none follows for an hour.
        for _ in range(100):
            if backend.connections:
                break
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", backend
    finally:
        await runner.cleanup()
        await close_backend(upstream, backend.writers)


def error_of(body: bytes) -> dict[str, object]:
    """The router's error object; fails unless ``body`` is exactly that shape."""
    document = json.loads(body)
    assert list(document) == ["error"]
    error = document["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and isinstance(error["code"], str)
    return error


async def raw(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as it is; the answer is read until the router closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def post(body: bytes, *extra: bytes, key: str = KEY) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nConnection: close\r\n"
        + b"Authorization: Bearer %b\r\n" % key.encode()
        + b"".join(line + b"\r\n" for line in extra)
        + b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )


def chat(size: int = 0) -> bytes:
    """A valid chat request of exactly ``size`` bytes (at least its bare size)."""
    bare = {"model": "chat", "messages": [{"role": "user", "content": ""}]}
    pad = max(0, size - len(json.dumps(bare)))
    return json.dumps({**bare, "messages": [{"role": "user", "content": "x" * pad}]}).encode()


def leaked(text: str, *credentials: str) -> set[str]:
    """Every 8-character piece of a credential that occurs in ``text``."""
    pieces = {c[i : i + 8] for c in credentials for i in range(len(c) - 7)}
    return {text[i : i + 8] for i in range(len(text) - 7)} & pieces


# --------------------------------------------------------------------------- body limit


async def test_a_body_at_the_limit_goes_through_and_one_byte_more_gets_413(
    edge: tuple[str, Backend],
) -> None:
    url, backend = edge
    status, _, body = await raw(url, post(chat(LIMIT)))
    assert status == 200 and json.loads(body)["choices"]
    assert len(backend.posts) == 1 and len(backend.posts[0]) >= LIMIT - 20
    connections = backend.connections
    status, headers, body = await raw(url, post(chat(LIMIT + 1)))
    assert status == 413 and headers["content-type"] == "application/json"
    assert error_of(body)["code"] == "request_too_large"
    assert (len(backend.posts), backend.connections) == (1, connections)


async def test_an_oversize_body_is_refused_before_any_backend_by_length_or_by_stream(
    edge: tuple[str, Backend],
) -> None:
    url, backend = edge
    connections = backend.connections
    twenty_mb = chat(20 * 1024 * 1024)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(twenty_mb), 64 * 1024):
            yield twenty_mb[start : start + 64 * 1024]

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for data in (io.BytesIO(twenty_mb), pieces()):  # Content-Length, then chunked
            async with session.post(url + CHAT, data=data, headers=headers) as response:
                assert response.status == 413
                assert error_of(await response.read())["type"] == "invalid_request_error"
    assert (backend.posts, backend.connections) == ([], connections)


async def test_a_body_declared_too_large_is_refused_before_the_client_sends_it(
    edge: tuple[str, Backend],
) -> None:
    url, backend = edge
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    for length, first_line in ((LIMIT, b"HTTP/1.1 100 Continue"), (20 * LIMIT, b"HTTP/1.1 413 ")):
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer %b\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (KEY.encode(), length)
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(first_line), head
        if length == LIMIT:  # told to go on: send the body, get the answer, keep the connection
            writer.write(chat(LIMIT))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
        size = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(size)
    assert error_of(body)["code"] == "request_too_large"
    writer.close()
    assert len(backend.posts) == 1


# --------------------------------------------------------------------------- hostile requests

SECRET = secrets.token_urlsafe(7000)  # longer than a header field may be
HOSTILE = {
    "oversize Authorization": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer "
        + SECRET.encode()
        + b"\r\nContent-Length: 2\r\n\r\n{}",
        431,
        "request_header_too_large",
    ),
    "oversize Authorization, no scheme": (
        b"GET /v1/models HTTP/1.1\r\nAuthorization: " + SECRET.encode() + b"\r\n\r\n",
        431,
        "request_header_too_large",
    ),
    "oversize request line": (
        b"GET /v1/models?api_key=" + SECRET.encode() + b" HTTP/1.1\r\n\r\n",
        431,
        "request_header_too_large",
    ),
    "bad method": (b"G@T /health HTTP/1.1\r\n\r\n", 400, "malformed_request_line"),
    "bad version": (b"GET /health HTTP/9.x\r\n\r\n", 400, "malformed_request_line"),
    "TLS on the plain port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, None),
    "control byte in a header": (
        post(chat(), b"X-Trace: a\x01" + SECRET[:40].encode()),
        400,
        "malformed_header",
    ),
    "space in a header name": (
        post(chat(), b"Api Key: " + SECRET[:40].encode()),
        400,
        "malformed_header",
    ),
    "too many headers": (
        post(chat(), *(b"X-%d: 1" % i for i in range(200))),
        431,
        "too_many_headers",
    ),
    "bad chunk size": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        400,
        None,
    ),
    "bad JSON": (
        post(b'{"model": "chat", "api_key": "' + SECRET[:40].encode()),
        400,
        "invalid_json",
    ),
    "bad UTF-8": (post(b'{"model": "chat", "messages": "\xff\xfe\xfd"}'), 400, "invalid_json"),
    "deep nesting": (post(b"[" * 200_000 + b"]" * 200_000), 400, "invalid_json"),
    "not an object": (post(b'"' + SECRET[:40].encode() + b'"'), 400, "invalid_request"),
    "unknown Expect": (post(chat(), b"Expect: magic"), 417, "expectation_failed"),
    "unknown key": (post(chat(), key=SECRET[:64]), 401, "invalid_api_key"),
    "unknown path": (
        b"GET /v1/secrets HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n",
        404,
        "unknown_endpoint",
    ),
    "wrong method": (
        b"DELETE /v1/chat/completions HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n",
        405,
        "method_not_allowed",
    ),
}
# Refused by the HTTP parser, before any handler: each is one log line.
MALFORMED = {
    "oversize Authorization",
    "oversize Authorization, no scheme",
    "oversize request line",
    "bad method",
    "bad version",
    "TLS on the plain port",
    "control byte in a header",
    "space in a header name",
    "too many headers",
    "bad chunk size",
}


async def test_hostile_requests_get_router_errors_and_no_credential_reaches_the_log(
    edge: tuple[str, Backend], daemon_log: io.StringIO
) -> None:
    url, backend = edge
    connections = backend.connections
    for name, (request, status, code) in HOSTILE.items():
        got, headers, body = await raw(url, request)
        assert (name, got) == (name, status)
        assert headers["content-type"] == "application/json", name
        error = error_of(body)
        assert code is None or error["code"] == code, (name, error)
        assert not leaked(body.decode(), SECRET, KEY), name
    assert (backend.posts, backend.connections) == ([], connections)
    log = daemon_log.getvalue()
    assert not leaked(log, SECRET, KEY)
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if "bad request from 127.0.0.1" in line]
    assert len(lines) == len(MALFORMED), log


async def test_a_body_whose_framing_breaks_while_it_is_read_gets_400_and_one_line(
    edge: tuple[str, Backend], daemon_log: io.StringIO
) -> None:
    url, backend = edge
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer %b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n" % KEY.encode()
    )
    await asyncio.sleep(0.2)  # the handler is reading the body now
    writer.write(b"zz\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert error_of(answer.partition(b"\r\n\r\n")[2])["code"] == "malformed_body"
    log = daemon_log.getvalue()
    assert "Traceback" not in log and log.count("bad request from 127.0.0.1") == 1, log
    assert backend.posts == []


# --------------------------------------------------------------------------- backend errors


async def test_a_failing_backend_is_answered_in_the_routers_shape_with_its_message(
    edge: tuple[str, Backend],
) -> None:
    url, backend = edge
    backend.answer = (b"500 Internal Server Error", b"application/json", VLLM_SERVER_ERROR)
    status, _, body = await raw(url, post(chat()))
    error = error_of(body)
    assert (status, error["type"], error["code"]) == (502, "server_error", "upstream_failed")
    assert "HTTP 500: EngineCore encountered an issue" in str(error["message"])
    backend.answer = (b"503 Service Unavailable", b"text/plain", b"server overloaded\n")
    status, _, body = await raw(url, post(chat()))
    assert status == 502 and "HTTP 503: server overloaded" in str(error_of(body)["message"])
