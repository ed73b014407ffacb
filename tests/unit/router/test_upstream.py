"""The proxy's HTTP/1.1 client against real loopback servers that answer with exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from hxp_runtime.router.upstream import UpstreamError, UpstreamPool

Answer = Callable[[bytes, asyncio.StreamWriter], "asyncio.Future[None] | None"]


@asynccontextmanager
async def server(
    *answers: list[bytes | float] | bytes, close_after: bool = False
) -> AsyncIterator[tuple[str, list[bytes], list[int]]]:
    """A server that answers the n-th request with answers[n] (a list: written in pieces, a
    number in it a pause of that many seconds).

    Yields its URL, the requests it received, and how many connections it accepted.
    """
    requests: list[bytes] = []
    connections = [0]
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                requests.append(head + await reader.readexactly(length))
                answer = answers[min(len(requests), len(answers)) - 1]
                for piece in answer if isinstance(answer, list) else [answer]:
                    if isinstance(piece, float):
                        await asyncio.sleep(piece)
                        continue
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        async with srv:
            yield f"http://127.0.0.1:{port}", requests, connections
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


CHUNKED_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
# Two server-sent events, and the chunked answer that carries them one chunk each, in pieces
# written one after the other.
TWO_EVENTS = b"data: one\n\ndata: two\n\n"
TWO_EVENTS_WIRE = [CHUNKED_HEAD, b"b\r\ndata: one\n\n\r\n", b"b\r\ndata: two\n\n\r\n", b"0\r\n\r\n"]


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_content_length_response_and_keep_alive_reuse() -> None:
    async with server(ok(b'{"a":1}'), ok(b'{"b":2}')) as (url, requests, connections):
        pool = UpstreamPool(url, authorization="up-key")
        first = await pool.post(b"/v1/completions", b'{"x":1}', deadline(), buffered=True)
        second = await pool.post(b"/v1/completions", b'{"x":2}', deadline(), buffered=True)
        assert (first.status, first.body, first.content_type) == (
            200,
            b'{"a":1}',
            b"application/json",
        )
        assert second.body == b'{"b":2}'
        assert connections == [1]  # one connection, reused
        assert requests[0].startswith(b"POST /v1/completions HTTP/1.1\r\n")
        assert b"authorization: Bearer up-key\r\n" in requests[0]
        assert requests[0].endswith(b'content-length: 7\r\n\r\n{"x":1}')
        pool.close()


async def test_chunked_body_split_anywhere_is_reassembled() -> None:
    body = TWO_EVENTS
    wire = CHUNKED_HEAD + b"b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n0\r\n\r\n"
    pieces = [wire[i : i + 7] for i in range(0, len(wire), 7)]
    async with server(pieces, ok(b"{}")) as (url, _, connections):
        pool = UpstreamPool(url)
        response = await pool.post(b"/v1/chat/completions", b"{}", deadline(), buffered=True)
        assert response.body == body
        await pool.post(b"/v1/chat/completions", b"{}", deadline(), buffered=True)
        assert connections == [1]
        pool.close()


async def test_streaming_reads_pieces_as_they_arrive() -> None:
    async with server(TWO_EVENTS_WIRE) as (url, _, _connections):
        pool = UpstreamPool(url)
        response = await pool.post(b"/v1/chat/completions", b"{}", deadline(), buffered=False)
        assert response.status == 200
        received = []
        while piece := await response.read():
            received.append(piece)
        response.close()
        assert b"".join(received) == TWO_EVENTS
        assert len(received) == 2  # delivered as they came, not at the end
        pool.close()


async def test_connection_close_is_not_reused() -> None:
    answer = ok(b"{}", b"connection: close\r\n")
    async with server(answer, close_after=True) as (url, _, connections):
        pool = UpstreamPool(url)
        for _ in range(2):
            await pool.post(b"/p", b"{}", deadline(), buffered=True)
        assert connections == [2]
        pool.close()


async def test_a_keep_alive_connection_the_backend_closed_is_replaced_silently() -> None:
    async with server(ok(b"{}"), close_after=True) as (url, requests, connections):
        pool = UpstreamPool(url)
        await pool.post(b"/p", b"{}", deadline(), buffered=True)
        await asyncio.sleep(0.05)  # the server closed it meanwhile (no connection: close sent)
        response = await pool.post(b"/p", b"{}", deadline(), buffered=True)
        assert response.status == 200
        assert connections == [2] and len(requests) == 2
        pool.close()


async def test_deadline_fails_with_timeout() -> None:
    async with server([b"HTTP/1.1 200 OK\r\n"]) as (url, _, _connections):
        pool = UpstreamPool(url)
        with pytest.raises(UpstreamError) as error:
            await pool.post(b"/p", b"{}", deadline(0.2), buffered=True)
        assert error.value.reason == "timeout"


async def test_a_reused_connection_keeps_each_exchange_to_its_own_deadline() -> None:
    """The deadline timer outlives the exchange it was set for (it is not made and cancelled per
    request): firing early for the next exchange, it waits on; armed late, it is set earlier."""
    slow = [0.5, ok(b'{"slow":1}')]
    async with server(ok(b"{}"), slow, [b"HTTP/1.1 200 OK\r\n"]) as (url, _, connections):
        pool = UpstreamPool(url)
        loop = asyncio.get_running_loop()
        await pool.post(b"/p", b"{}", deadline(0.2), buffered=True)
        # Its timer fires at 0.2 s, during the next exchange, whose deadline is 2 s.
        response = await pool.post(b"/p", b"{}", deadline(2.0), buffered=True)
        assert response.body == b'{"slow":1}'
        # A timer armed for a later deadline than the next exchange's is set earlier.
        started = loop.time()
        with pytest.raises(UpstreamError) as error:
            await pool.post(b"/p", b"{}", deadline(0.3), buffered=True)
        assert error.value.reason == "timeout"
        assert 0.25 < loop.time() - started < 1.0  # not the 2 s of the timer set before
        assert connections == [1]
        pool.close()


async def test_malformed_and_refused() -> None:
    async with server(b"NOT HTTP AT ALL\r\n\r\n") as (url, _, _connections):
        with pytest.raises(UpstreamError) as error:
            await UpstreamPool(url).post(b"/p", b"{}", deadline(), buffered=True)
        assert error.value.reason == "protocol"
    async with server(b"") as (url, _, _connections):
        pass  # the port is free again
    with pytest.raises(UpstreamError) as refused:
        await UpstreamPool(url).post(b"/p", b"{}", deadline(), buffered=True)
    assert refused.value.reason == "connect"


async def test_reset_mid_stream_is_reported_to_the_reader() -> None:
    async with server([CHUNKED_HEAD, b"b\r\ndata: one\n\n\r\n"], close_after=True) as (url, _, _c):
        pool = UpstreamPool(url)
        response = await pool.post(b"/p", b"{}", deadline(), buffered=False)
        assert await response.read() == b"data: one\n\n"
        with pytest.raises(UpstreamError) as error:
            await response.read()
        assert error.value.reason == "reset"
        response.close()


def test_only_plain_http_urls() -> None:
    async def make() -> None:
        UpstreamPool("https://example.invalid:443")

    with pytest.raises(ValueError, match="http://host:port"):
        asyncio.run(make())


async def test_relay_hands_pieces_to_the_sink_as_they_arrive() -> None:
    async with server(TWO_EVENTS_WIRE, ok(b"{}")) as (url, _, connections):
        pool = UpstreamPool(url)
        response = await pool.post(b"/p", b"{}", deadline(), buffered=False)
        first = await response.read()
        seen: list[bytes] = []
        await response.relay(seen.append)
        response.close()
        assert first + b"".join(seen) == TWO_EVENTS
        assert len(seen) == 1  # the second piece came later, on its own
        await pool.post(b"/p", b"{}", deadline(), buffered=True)
        assert connections == [1]  # a relayed stream read to its end gives the connection back
        pool.close()


async def test_closing_a_relayed_stream_early_ends_the_relay() -> None:
    async with server(TWO_EVENTS_WIRE) as (url, _, _connections):
        pool = UpstreamPool(url)
        response = await pool.post(b"/p", b"{}", deadline(), buffered=False)
        await response.read()
        relayed = response.relay(lambda piece: response.close())
        with pytest.raises(UpstreamError) as error:
            await relayed
        assert error.value.reason == "closed"
        pool.close()
