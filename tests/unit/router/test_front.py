"""The router's own HTTP front (hxp_runtime.router.front) on loopback, before a raw backend.

What the front must keep from aiohttp's server: requests in pieces and pipelined, keep-alive and
Connection: close, the same answer fields, streams, a client that leaves, a stop that waits for
requests in flight, idle connections closed; and handing every request it does not serve to
aiohttp with the bytes that came so far. test_edge sends every kind of hostile request through
the front as well, and a differential test sends some 500 heads, valid and broken byte by byte,
to the front and to aiohttp's server alone: the first answer's status must be the same.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from hxp_runtime.router import front as front_module
from hxp_runtime.router.edge import EdgeRunner
from hxp_runtime.router.front import (
    HEAD_BYTES,
    FrontRunner,
    LastHead,
    field_lines,
    parse_head,
)
from hxp_runtime.router.strategies import Endpoint
from tests.unit.router.conftest import close_backend, one_backend_gateway, read_request

KEY = "front-static-key-0123456789abcdef"
ANSWER = b'{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 2}}'
EVENTS = 20


@dataclass
class Backend:
    """A vLLM stand-in: a buffered answer, a slow one ("slow" in the body), or a stream of
    EVENTS events 20 ms apart ("stream" in the body); it notes a stream cut short."""

    url: str = ""
    writers: set[asyncio.StreamWriter] = field(default_factory=set)  # its open connections
    posts: int = 0
    streams_cut: int = 0
    streams_done: int = 0
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head, body = await read_request(reader)
                if not head.startswith(b"POST"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    continue
                self.posts += 1
                self.bodies.append(body)
                if b'"stream": true' in body:
                    await self.stream(writer)
                    continue
                if b"slow" in body:
                    await asyncio.sleep(0.5)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%b" % (len(ANSWER), ANSWER)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        try:
            for n in range(EVENTS):
                event = b'data: {"choices": [{"delta": {"content": "%d"}}]}\n\n' % n
                writer.write(b"%x\r\n%b\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
            await writer.drain()
            self.streams_done += 1
        except ConnectionError:
            self.streams_cut += 1
            raise


@dataclass
class Served:
    host: str
    port: int
    backend: Backend
    runner: FrontRunner


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    backend = Backend()
    upstream = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    backend.url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    gateway = one_backend_gateway(backend.url, KEY)
    runner = FrontRunner(gateway.build_app(), gateway, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Served("127.0.0.1", runner.addresses[0][1], backend, runner)
    finally:
        await runner.cleanup()
        await close_backend(upstream, backend.writers)


def chat(content: str = "hello", **extra: object) -> bytes:
    return json.dumps(
        {"model": "chat", "messages": [{"role": "user", "content": content}], **extra}
    ).encode()


def post(body: bytes, *fields: bytes, path: bytes = b"/v1/chat/completions") -> bytes:
    return (
        b"POST %b HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer %b\r\n" % (path, KEY.encode())
        + b"".join(f + b"\r\n" for f in fields)
        + b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer off a keep-alive connection: Content-Length or chunked."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if fields.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            piece = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += piece[:-2]
    else:
        body = await reader.readexactly(int(fields.get("content-length", "0")))
    return int(status_line.split()[1]), fields, body


async def connect(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(served.host, served.port)


# --------------------------------------------------------------------------- the head


def test_the_head_is_parsed_strictly_and_anything_unusual_is_not_the_fronts() -> None:
    def parsed(
        *fields: bytes, line: bytes = b"POST /v1/embeddings HTTP/1.1", host: bool = True
    ) -> object:
        """The head's parse; every case has a Host field unless ``host`` is False."""
        fields = (b"Host: r", *fields) if host else fields
        head = line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
        result = parse_head(head, len(head) - 4)
        return None if result is None else result[:3]

    ok = parsed(b"Content-Length: 2", b"X-HXP-Session:  a b\t")
    assert ok == (
        Endpoint.EMBEDDING,
        b"/v1/embeddings",
        {"host": "r", "content-length": "2", "x-hxp-session": "a b"},
    )
    for fields, why in (
        ((), "no Content-Length"),
        ((b"Content-Length: 2", b"Content-Length: 2"), "a field twice"),
        ((b"Content-Length: 2", b"host: s"), "a field twice"),
        ((b"Content-Length: 2", b"authorization: a", b"Authorization: b"), "a field twice"),
        ((b"Content-Length: +2",), "a sign"),
        ((b"Content-Length: 2", b"Transfer-Encoding: chunked"), "chunked"),
        ((b"Content-Length: 2", b"Expect: 100-continue"), "Expect"),
        ((b"Content-Length: 2", b"Content-Encoding: gzip"), "compressed"),
        ((b"Content-Length: 2", b"Connection: upgrade"), "Connection other than close"),
        ((b"Content-Length: 2", b"X-A: caf\xc3\xa9"), "a byte outside ASCII"),
        ((b"Content-Length: 2", b"X-A: a\x01"), "a control byte"),
        ((b"Content-Length: 2", b"X A: a"), "a space in a name"),
        ((b"Content-Length: 2", b" X-A: a"), "a folded line"),
        ((b"Content-Length: 2", b"X-A: a\nTransfer-Encoding: chunked"), "a bare LF"),
        ((b"Transfer-Encoding: chunked\nContent-Length: 2",), "a bare LF"),
        ((b"Content-Length: 2", b"X-A: a\rb"), "a bare CR"),
        ((b"Content-Length: 2", *(b"X-%d: 1" % i for i in range(100))), "too many fields"),
    ):
        assert parsed(*fields) is None, why
    assert parsed(b"Content-Length: 2", host=False) is None, "no Host"
    for line in (
        b"POST /v1/embeddings HTTP/1.0",
        b"POST /v1/embeddings?x=1 HTTP/1.1",
        b"GET /v1/embeddings HTTP/1.1",
        b"POST /v1/models HTTP/1.1",
        b"post /v1/embeddings HTTP/1.1",
    ):
        assert parsed(b"Content-Length: 2", line=line) is None, line


def test_a_hostile_head_is_refused_in_linear_time() -> None:
    # Values built to make a backtracking pattern take quadratic time, each as long as a head
    # may be: refused (not the front's) within milliseconds.
    for value in (b"a " * 4000 + b"\x01", b"a" + b" " * 8000 + b"\x01", b"a\t" * 4000 + b"\xff"):
        head = b"POST /v1/embeddings HTTP/1.1\r\nX-A: " + value[: HEAD_BYTES - 60] + b"\r\n\r\n"
        began = time.perf_counter()
        assert parse_head(head, len(head) - 4) is None
        assert time.perf_counter() - began < 0.05


def test_a_head_like_the_last_but_for_the_length_parses_as_parse_head_parses_it() -> None:
    """LastHead.same gives parse_head's answer or None (parse again), never another answer:
    checked on the head itself, other lengths, and every one-byte change around the length."""
    first = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer k\r\n"
        b"content-LENGTH: \t17\r\nX-Stainless-Retry-Count: 0\r\n\r\n"
    )
    parsed = parse_head(first, len(first) - 4)
    assert parsed is not None
    last = LastHead(first, len(first) - 4, parsed)

    def expected(head: bytes) -> object:
        result = parse_head(head, len(head) - 4)
        return None if result is None else (*result[:2], result[3:])

    def same(head: bytes) -> object:
        result = last.same(head, len(head) - 4)
        return None if result is None else (*result[:2], result[3:])

    assert same(first) == expected(first)
    for length in (b"0", b"9", b"00017", b"123456789012"):
        head = first.replace(b"17", length)
        assert same(head) == expected(head) is not None, length
        assert last.same(bytearray(head), len(head) - 4) is not None
    for length in (b"", b"+1", b"-1", b"1 2", b"1234567890123", b"\xd9\xa1", b"1\r\nX: 1"):
        head = first.replace(b"17", length)
        assert same(head) is None, length  # not the same head: parsed again
    at = first.index(b"17")
    rng = random.Random(7)
    for position in [*range(at - 12, at + 20), *rng.sample(range(len(first) - 4), 20)]:
        for byte in (b" ", b"\t", b"\r", b"\n", b"x", b"9", b":", b"\x00"):
            head = first[:position] + byte + first[position + 1 :]
            result = same(head)
            assert result is None or result == expected(head), (position, byte)


# --------------------------------------------------------------------------- connections


async def test_pipelined_requests_and_one_in_pieces_are_answered_in_order(
    served: Served,
) -> None:
    reader, writer = await connect(served)
    bodies = [chat(f"question {n}") for n in range(3)]
    # Three requests in one write, the last one a plain endpoint (handed to aiohttp after the
    # two before it were answered), then a request a byte at a time on aiohttp's connection.
    writer.write(post(bodies[0]) + post(bodies[1]) + b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
    answers = [await read_answer(reader) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert answers[2][2] == b'{"status": "ok"}'
    assert served.backend.bodies == bodies[:2]
    for byte in post(bodies[2]):
        writer.write(bytes([byte]))
        await writer.drain()
    status, _, body = await read_answer(reader)
    assert (status, body) == (200, ANSWER)
    writer.close()


async def test_connections_handed_to_aiohttp_are_counted(served: Served) -> None:
    metrics = served.runner.gateway.metrics
    accepted, handed_over = metrics.connections_accepted, metrics.connections_handed_over
    before = (accepted._value.get(), handed_over._value.get())
    for request in (post(chat(), b"Connection: close"), b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n"):
        reader, writer = await connect(served)
        writer.write(request)
        assert (await read_answer(reader))[0] == 200
        writer.close()
    after = (accepted._value.get(), handed_over._value.get())
    assert (after[0] - before[0], after[1] - before[1]) == (2, 1)


async def test_a_request_in_pieces_is_served_by_the_front(served: Served) -> None:
    reader, writer = await connect(served)
    request = post(chat("in pieces"))
    for start in range(0, len(request), 7):
        writer.write(request[start : start + 7])
        await writer.drain()
        await asyncio.sleep(0.001)
    status, _, body = await read_answer(reader)
    assert (status, body) == (200, ANSWER)
    front = served.runner.front
    assert front is not None and len(front.connections) == 1  # still the front's
    writer.close()


async def test_keep_alive_is_kept_and_connection_close_is_honoured(served: Served) -> None:
    reader, writer = await connect(served)
    for _ in range(3):
        writer.write(post(chat()))
        status, fields, _ = await read_answer(reader)
        assert status == 200 and "connection" not in fields
    writer.write(post(chat(), b"Connection: close"))
    status, fields, _ = await read_answer(reader)
    assert status == 200 and fields["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the router
    assert served.backend.posts == 4
    writer.close()


async def test_both_paths_answer_with_the_same_fields(served: Served) -> None:
    answers = []
    for extra in ((), (b"Expect: 100-continue",)):  # the front; aiohttp (Expect is its)
        reader, writer = await connect(served)
        writer.write(post(chat(), *extra))
        if extra:
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
        answers.append(await read_answer(reader))
        writer.close()
    (status, front_fields, front_body), (status2, aiohttp_fields, aiohttp_body) = answers
    assert (status, front_body) == (status2, aiohttp_body) == (200, ANSWER)
    assert front_fields.keys() == aiohttp_fields.keys()
    for name in ("content-type", "x-hxp-backend", "server", "content-length"):
        assert front_fields[name] == aiohttp_fields[name], name
    # A refusal: the router's own answer, the same on both paths.
    refusals = []
    for extra in ((), (b"Expect: 100-continue",)):
        reader, writer = await connect(served)
        writer.write(post(b'{"model": "gpt-4"}', *extra))
        if extra:
            await reader.readuntil(b"\r\n\r\n")
        refusals.append(await read_answer(reader))
        writer.close()
    (s1, f1, b1), (s2, f2, b2) = refusals
    assert (s1, b1) == (s2, b2) and s1 == 404 and f1.keys() == f2.keys()


async def test_a_stream_is_relayed_chunked_and_a_client_that_leaves_stops_it(
    served: Served,
) -> None:
    reader, writer = await connect(served)
    writer.write(post(chat(stream=True)))
    status, fields, body = await read_answer(reader)
    assert status == 200 and fields["content-type"] == "text/event-stream"
    assert fields["x-hxp-backend"] == "chat" and fields["cache-control"] == "no-cache"
    assert body.count(b"data: ") == EVENTS + 1 and body.endswith(b"data: [DONE]\n\n")
    # The same connection serves the next request; then a stream its client leaves.
    writer.write(post(chat()))
    assert (await read_answer(reader))[0] == 200
    writer.write(post(chat(stream=True)))
    await reader.readuntil(b"data: ")
    writer.close()
    for _ in range(100):
        if served.backend.streams_cut:
            break
        await asyncio.sleep(0.02)
    assert (served.backend.streams_done, served.backend.streams_cut) == (1, 1)


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def idle_and_busy(served: Served) -> tuple[Connection, Connection]:
    """A connection that was answered and is idle, and one whose slow request is at the backend."""
    idle = await connect(served)
    idle[1].write(post(chat()))
    assert (await read_answer(idle[0]))[0] == 200
    busy = await connect(served)
    busy[1].write(post(chat("slow")))
    await asyncio.sleep(0.1)
    return idle, busy


async def test_a_stop_closes_idle_connections_and_finishes_requests_in_flight(
    served: Served,
) -> None:
    (idle_reader, idle_writer), (reader, writer) = await idle_and_busy(served)
    served.runner.begin_closing()
    cleanup = asyncio.create_task(served.runner.cleanup())
    status, fields, body = await read_answer(reader)
    assert (status, body, fields["connection"]) == (200, ANSWER, "close")
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # the idle one was closed
    await cleanup
    writer.close()
    idle_writer.close()


async def test_an_idle_connection_is_closed_after_the_keepalive_time(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    (reader, writer), (busy_reader, busy_writer) = await idle_and_busy(served)
    front = served.runner.front
    assert front is not None
    monkeypatch.setattr(front_module, "KEEPALIVE_S", 0.05)
    front._sweep()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert (await read_answer(busy_reader))[0] == 200  # the busy one was left alone
    writer.close()
    busy_writer.close()


# --------------------------------------------------------------------------- differential


@pytest.fixture
async def both() -> AsyncIterator[tuple[Served, int]]:
    """The gateway behind the front, and the same gateway on aiohttp's server alone."""
    backend = Backend()
    upstream = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    backend.url = f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}"
    front_gateway, plain_gateway = (one_backend_gateway(backend.url, KEY) for _ in range(2))
    front = FrontRunner(front_gateway.build_app(), front_gateway, access_log=None)
    plain = EdgeRunner(plain_gateway.build_app(), access_log=None)
    for runner in (front, plain):
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield Served("127.0.0.1", front.addresses[0][1], backend, front), plain.addresses[0][1]
    finally:
        for runner in (front, plain):
            await runner.cleanup()
        await close_backend(upstream, backend.writers)


async def first_status(port: int, request: bytes) -> int | None:
    """The status of the first answer to ``request``; None when none came within 0.3 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        line = await asyncio.wait_for(reader.readline(), 0.3)
    except TimeoutError:
        line = b""
    writer.close()
    # aiohttp answers a request it cannot parse with an HTTP/1.0 status line.
    return int(line.split()[1]) if line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")) else None


# Bytes that parsers disagree about, put in place of one byte of a valid head.
ODD_BYTES = b'\x00\t \r\n:;,"()/\\\x7f\x80\xffA0'


async def test_the_front_answers_what_aiohttp_alone_answers(both: tuple[Served, int]) -> None:
    """Every request, valid or broken in its head, gets the same status from the daemon's
    server (the front, then aiohttp) as from aiohttp's server alone: the front serves no
    request aiohttp would refuse, and refuses none it would serve."""
    served, plain_port = both
    body = chat()
    valid = post(body, b"X-HXP-Session: s1", b"Accept: */*")
    head_end = valid.index(b"\r\n\r\n")
    requests = [
        valid,
        valid.replace(b"Host: router\r\n", b""),
        valid.replace(b"Host: router", b"Host:"),
        valid.replace(b"POST /v1/chat/completions", b"POST http://r/v1/chat/completions"),
        valid.replace(b"HTTP/1.1\r\n", b"HTTP/1.1 \r\n", 1),
        valid.replace(b"HTTP/1.1\r\n", b"http/1.1\r\n", 1),
        valid.replace(b"Content-Length:", b"Content-Length :"),
        valid.replace(b"Content-Length: ", b"Content-Length: 0"),
        valid.replace(b"Accept: */*", b"Accept: */*\r\n\tfolded"),
        valid.replace(b"Accept: */*", b"Transfer-Encoding: identity"),
        valid.replace(b"Accept: */*", b"Connection: keep-alive, close"),
    ]
    # One byte of the head replaced, at positions spread over it.
    for i, position in enumerate(range(head_end)):
        odd = ODD_BYTES[i % len(ODD_BYTES) : i % len(ODD_BYTES) + 1]
        requests.append(valid[:position] + odd + valid[position + 1 :])
    # And 300 more, each with any byte at any place of the head (a fixed seed: repeatable).
    rng = random.Random(14)
    for _ in range(300):
        position = rng.randrange(head_end)
        requests.append(valid[:position] + bytes([rng.randrange(256)]) + valid[position + 1 :])
    differences = []
    for request in requests:
        front, plain = (
            await first_status(served.port, request),
            await first_status(plain_port, request),
        )
        if front != plain:
            differences.append((request[: head_end + 4], front, plain))
    assert not differences, differences
    assert len(requests) > 450


def test_header_lines_are_utf8_and_a_cr_or_lf_in_a_field_is_refused() -> None:
    """One writer of fields for both paths (answers and streams), as aiohttp writes them."""
    assert field_lines([("X-A", "1"), ("X-Name", "café")]) == "X-A: 1\r\nX-Name: café\r\n".encode()
    for name, value in [
        ("X-A", "1\r\nSet-Cookie: stolen=1"),
        ("X-A", "1\nX-B: 2"),
        ("X-A\r\nX-B", "2"),
        ("X-A", "a\rb"),
    ]:
        with pytest.raises(ValueError, match="CR or LF"):
            field_lines([(name, value)])
