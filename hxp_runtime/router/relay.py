"""Relaying a backend's answer to the client: buffered whole, or streamed (SSE) as it arrives.

A stream is committed to the client only here, once its first bytes arrived (``attempts``):
the head and the first piece go through the sink (aiohttp's response, or the front's own
connection), every further piece goes from the upstream
protocol's callback straight to the client's transport, without a task switch, and the
upstream socket pauses while the client's write buffer is full. A backend that fails in the
middle of a stream gets an SSE error event after what was already sent, and an error event the
backend sends itself is passed on in the router's shape; a client that goes away closes the
upstream connection, which stops the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from hxp_runtime.router.attempts import Answer, failed
from hxp_runtime.router.errors import (
    UPSTREAM_ERROR_EVENT,
    error_body,
    upstream_error,
    upstream_error_events,
)
from hxp_runtime.router.metrics import RouterMetrics
from hxp_runtime.router.strategies import Backend
from hxp_runtime.router.upstream import STREAM_HIGH_WATER, UpstreamError, UpstreamResponse
from hxp_runtime.router.usage import usage_of

BACKEND_HEADER = "x-hxp-backend"
SSE_DATA = b"data: "
STREAM_ERROR_EVENT = b"data: %b\n\n" % error_body(
    502, "The backend failed in the middle of the answer.", "upstream_failed"
)
# Enough of a stream's end to hold its last event, where vLLM puts the usage.
TAIL_BYTES = 512
RESUME_CHECK_S = 0.005


def buffered(answer: Answer) -> web.Response:
    """A complete answer as the backend sent it; an error status in the router's shape."""
    upstream = answer.upstream
    if upstream.status >= 400:
        response = upstream_error(upstream.status, upstream.body)
        response.headers[BACKEND_HEADER] = answer.backend.id
        return response
    return web.Response(
        status=upstream.status,
        body=upstream.body,
        headers={
            "Content-Type": upstream.content_type.decode("latin-1"),
            BACKEND_HEADER: answer.backend.id,
        },
    )


def cached(body: bytes, backend: Backend) -> web.Response:
    """An answer from the response cache, in the name of the backend it is cached for."""
    return web.Response(
        body=body,
        headers={
            "Content-Type": "application/json",
            BACKEND_HEADER: backend.id,
            "x-hxp-cache": "hit",
        },
    )


@dataclass(frozen=True, slots=True)
class Streamed:
    """What a relayed stream cost: tokens, whether it failed, its time to first byte."""

    prompt_tokens: int
    completion_tokens: int
    failed: bool
    ttft: float | None


class StreamSink(Protocol):
    """Where a stream goes: aiohttp's response (:class:`AiohttpSink`) or the front's own
    connection (``front``). After ``begin`` every further piece is written to ``transport``
    by the forwarder, framed as chunks when ``framed``."""

    transport: asyncio.Transport | None
    framed: bool

    async def begin(self, headers: dict[str, str], first_piece: bytes) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def end(self) -> None: ...


class AiohttpSink:
    """A stream through aiohttp's ``StreamResponse``: the head and first piece, then the rest."""

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.response = web.StreamResponse()
        self.transport = request.transport
        self.framed = True

    async def begin(self, headers: dict[str, str], first_piece: bytes) -> None:
        self.response.headers.update(headers)
        await self.response.prepare(self.request)
        await self.response.write(first_piece)
        # aiohttp chose chunked transfer coding for an HTTP/1.1 client (not for 1.0).
        self.framed = self.response.headers.get("Transfer-Encoding") == "chunked"

    async def write(self, data: bytes) -> None:
        await self.response.write(data)

    async def end(self) -> None:
        await self.response.write_eof()


class StreamForwarder:
    """Writes each piece of a stream to the client's transport, counting its SSE events."""

    __slots__ = ("client_gone", "events", "framed", "loop", "tail", "transport", "upstream")

    def __init__(
        self,
        transport: asyncio.Transport | None,
        upstream: UpstreamResponse,
        first_piece: bytes,
    ) -> None:
        self.transport = transport
        self.upstream = upstream
        self.loop = asyncio.get_running_loop()
        self.events = first_piece.count(SSE_DATA)
        self.tail = first_piece
        self.client_gone = False
        # Whether the client gets chunked transfer coding (HTTP/1.1) or raw bytes (HTTP/1.0).
        self.framed = True

    def forward(self, piece: bytes) -> None:
        """Runs in the upstream protocol's callback for every piece after the first."""
        if UPSTREAM_ERROR_EVENT in piece:
            piece = upstream_error_events(piece)
        self.events += piece.count(SSE_DATA)
        self.tail = self.tail[-TAIL_BYTES:] + piece
        transport = self.transport
        if transport is None or transport.is_closing():
            # The client went away; closing the upstream connection stops the generation.
            self.client_gone = True
            self.upstream.close()
            return
        transport.write(b"%x\r\n%b\r\n" % (len(piece), piece) if self.framed else piece)
        if transport.get_write_buffer_size() > STREAM_HIGH_WATER:
            self.upstream.pause()
            self.loop.call_later(RESUME_CHECK_S, self.resume_when_drained)

    def resume_when_drained(self) -> None:
        transport = self.transport
        if transport is None or transport.get_write_buffer_size() <= STREAM_HIGH_WATER // 4:
            self.upstream.resume()
        else:
            self.loop.call_later(RESUME_CHECK_S, self.resume_when_drained)

    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens: the stream's usage, else one token per event."""
        usage = usage_of(self.tail)
        # Without stream_options.include_usage vLLM sends no usage: count one token per event.
        return usage if usage else (0, max(0, self.events - 2))


async def stream(
    sink: StreamSink, answer: Answer, started: float, metrics: RouterMetrics
) -> Streamed:
    """Pass an SSE answer through as it arrives; committed once its first bytes are here.

    The backend succeeded once the client has the first piece; a failure after that counts
    against it unless the client left first.
    """
    loop = asyncio.get_running_loop()
    upstream, live = answer.upstream, answer.live
    headers = {
        "Content-Type": upstream.content_type.decode("latin-1"),
        "Cache-Control": "no-cache",
        BACKEND_HEADER: answer.backend.id,
    }
    forwarder = StreamForwarder(sink.transport, upstream, answer.first_piece)
    broken = False
    ttft = None
    try:
        first_piece = answer.first_piece
        if UPSTREAM_ERROR_EVENT in first_piece:
            first_piece = upstream_error_events(first_piece)
        await sink.begin(headers, first_piece)  # the head and the first piece
        ttft = loop.time() - started
        live.succeeded(loop.time() - answer.started)
        forwarder.framed = sink.framed
        await upstream.relay(forwarder.forward)
    except UpstreamError as exc:
        broken = True
        if not forwarder.client_gone:
            failed(answer.backend, live, metrics, exc.reason)
            try:
                await sink.write(STREAM_ERROR_EVENT)
            except ConnectionError:
                forwarder.client_gone = True
    except ConnectionError:
        broken = forwarder.client_gone = True
    finally:
        live.stats.outstanding -= 1
        if ttft is None:  # the client left before the first piece: no verdict on the backend
            live.breaker.release()
        upstream.close()
    if not forwarder.client_gone:
        with contextlib.suppress(ConnectionError):
            await sink.end()
    prompt, completion = forwarder.tokens()
    return Streamed(prompt, completion, broken, ttft)
