"""The router's own HTTP/1.1 front for the common proxied request; aiohttp serves the rest.

Nearly every request a router serves looks the same: a POST of a JSON body with a
Content-Length to one of the three proxied paths, over a keep-alive HTTP/1.1 connection.
aiohttp's server costs about 100 µs of CPU for such a request before the router does any work
of its own (docs/benchmarks.md, "the floor under the 150 µs"), against a target of 150 µs in
all. :class:`FrontProtocol` serves exactly those requests itself: it parses the head strictly,
gives the body to the same steps as aiohttp's handler (``Handlers.forward``) and writes the
answer to the transport in one piece; a stream goes through :class:`RawSink`, chunk-framed.

Every other request is aiohttp's, with every byte the connection brought so far: before
anything was answered on it, the connection is handed over (``transport.set_protocol``) to
aiohttp's protocol (``edge.EdgeProtocol``) and stays there. That covers the plain endpoints,
HTTP/1.0, ``Expect``, chunked or compressed bodies, a body over ``router.max_body_bytes``, and
any head the front does not understand in full: a malformed or oversize one, one without Host,
a field with bytes outside visible ASCII, a repeated field, a Connection header other than
keep-alive or close.
Those get exactly the answers aiohttp's server gives them (``edge``, ``pipeline.read_body``);
the front never answers a request that aiohttp would refuse.

A connection serves its requests one at a time, in order (pipelined requests wait in its
buffer, and reading pauses while that holds more than PIPELINE_BYTES). Stopping works as with
aiohttp's server: while the router stops (``closing``), every answer says ``Connection: close``
and closes; :meth:`Front.shutdown` closes the idle connections and waits for the busy ones. A
connection idle for KEEPALIVE_S is closed, as aiohttp does.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_keepalive

from hxp_runtime.router.edge import EdgeRunner, EdgeServer
from hxp_runtime.router.errors import error_response
from hxp_runtime.router.handlers import Forwarded, Handlers
from hxp_runtime.router.strategies import Endpoint

if TYPE_CHECKING:
    from hxp_runtime.router.app import Gateway

log = logging.getLogger(__name__)

PATHS = {
    b"/v1/chat/completions": Endpoint.CHAT,
    b"/v1/completions": Endpoint.COMPLETION,
    b"/v1/embeddings": Endpoint.EMBEDDING,
}
# A head longer than one field may be (aiohttp's max_field_size) is aiohttp's to judge.
HEAD_BYTES = 8190
MAX_FIELDS = 64  # aiohttp refuses more than 128; a head with more than this is aiohttp's
PIPELINE_BYTES = 1 << 20  # buffered ahead of the request being answered, then reading pauses
KEEPALIVE_S = 3630.0  # aiohttp's keepalive_timeout: an idle connection is closed after this
SWEEP_S = 60.0
REQUEST_START = b"POST /v1/"

REQUEST_LINE = re.compile(rb"POST (" + b"|".join(map(re.escape, PATHS)) + rb") HTTP/1\.1\r\n")
# RFC 9110 field lines with visible ASCII values only (inner spaces and tabs allowed), matched
# on the head decoded as Latin-1, one whole line each (``^`` after every line break). The
# character classes around each quantifier are disjoint, so a failing match backtracks linearly.
FIELD_LINE = re.compile(
    r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?)[ \t]*\r\n",
    re.MULTILINE,
)
# Fields whose request the front leaves to aiohttp (it decodes, continues or refuses them).
NOT_SERVED = frozenset({"transfer-encoding", "content-encoding", "expect", "upgrade", "te"})
KEEP_ALIVE, CLOSE = "keep-alive", "close"
# Fields the router's own answers carry that the front writes itself.
WRITTEN_HERE = frozenset({"content-length", "connection", "date", "server", "transfer-encoding"})

Parsed = tuple[Endpoint, bytes, dict[str, str], int, int]


def parse_head(buffer: bytes | bytearray, end: int) -> Parsed | None:
    """(endpoint, path, fields, body start, body end) of the head ending at ``end`` (its blank
    line), or None when the request is not the front's to serve.

    ``fields`` has lower-case names; a field given twice makes the request aiohttp's.
    """
    line = REQUEST_LINE.match(buffer, 0, end + 2)
    if line is None:
        return None
    text = buffer[line.end() : end + 2].decode("latin-1")
    pairs = FIELD_LINE.findall(text)
    # Each match is one whole line (it starts a line and ends at its CRLF): as many matches as
    # line feeds means every line is a valid field, and no bare LF hides one in another.
    if len(pairs) != text.count("\n") or len(pairs) > MAX_FIELDS:
        return None
    fields = {name.lower(): value for name, value in pairs}
    length = fields.get("content-length")
    if (
        len(fields) != len(pairs)
        or length is None
        or "host" not in fields  # aiohttp refuses an HTTP/1.1 request without one (RFC 9112)
        or not length.isdigit()
        or len(length) > 12
        or not NOT_SERVED.isdisjoint(fields)
        or fields.get("connection", KEEP_ALIVE).lower() not in (KEEP_ALIVE, CLOSE)
    ):
        return None
    path = bytes(line.group(1))
    return PATHS[path], path, fields, end + 4, end + 4 + int(length)


CONTENT_LENGTH_LINE = b"\r\ncontent-length:"


class LastHead:
    """A connection's last head the front served, less its Content-Length value.

    A client on a keep-alive connection sends the same head with every request but for the
    body's length (wrk, and the openai SDK: its ``x-stainless-*`` fields do not change between
    requests). A head equal to the last one byte for byte, the length's digits aside, parses as
    it did: only the digits are read again, as ``parse_head`` reads them. That saves the whole
    parse (8.5 µs for wrk's head, measured alone). The fields are the first request's, and so is
    their ``content-length`` entry, which nothing after the parse reads.
    """

    __slots__ = ("after", "before", "parsed")

    def __init__(self, buffer: bytes | bytearray, end: int, parsed: Parsed) -> None:
        head = bytes(buffer[: end + 2])
        line = head.lower().find(CONTENT_LENGTH_LINE)
        start = line + len(CONTENT_LENGTH_LINE)
        while head[start : start + 1] in (b" ", b"\t"):
            start += 1
        stop = head.find(b"\r\n", start)
        self.before = head[:start]  # through the colon and the blanks after it
        self.after = head[stop:]  # from the line's CRLF through the last field's
        self.parsed = parsed

    def same(self, buffer: bytes | bytearray, end: int) -> Parsed | None:
        """The parse of this head when it is the last one but for the length, else None."""
        before = self.before
        if not buffer.startswith(before):
            return None
        stop = buffer.find(b"\r\n", len(before), end + 2)
        length = buffer[len(before) : stop]
        if (
            stop < 0
            or end + 2 - stop != len(self.after)
            or not buffer.startswith(self.after, stop)
            or not length.isdigit()
            or len(length) > 12
        ):
            return None
        endpoint, path, fields, _, _ = self.parsed
        return endpoint, path, fields, end + 4, end + 4 + int(length)


class Front:
    """One worker's front: its connections, the answers' common fields, the hand-over."""

    def __init__(self, handlers: Handlers, hand_over: Callable[[], asyncio.Protocol]) -> None:
        self.handlers = handlers
        self.metrics = handlers.gateway.metrics
        self.hand_over = hand_over  # makes aiohttp's protocol for a connection handed over
        self.loop = asyncio.get_running_loop()
        self.connections: set[FrontProtocol] = set()
        self.closing = False  # the router is stopping: every answer closes its connection
        self._second = 0
        self._tail = b""
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    def __call__(self) -> FrontProtocol:
        return FrontProtocol(self)

    def tail(self, close: bool) -> bytes:
        """The answer's last fields (Date, Server, maybe Connection: close) and the blank line."""
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._tail = b"Date: %b\r\nServer: %b\r\n" % (
                formatdate(second, usegmt=True).encode(),
                SERVER_SOFTWARE.encode(),
            )
        return self._tail + b"Connection: close\r\n\r\n" if close else self._tail + b"\r\n"

    def max_body_bytes(self) -> int:
        runtime = self.handlers.gateway.runtime
        return runtime.settings.max_body_bytes if runtime is not None else 0

    def _sweep(self) -> None:
        deadline = self.loop.time() - KEEPALIVE_S
        for connection in list(self.connections):
            if connection.task is None and connection.idle_since < deadline:
                connection.close()
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    def close_idle(self) -> None:
        """Close every connection not answering a request now (the first step of a stop)."""
        self.closing = True
        for connection in list(self.connections):
            if connection.task is None:
                connection.close()

    async def shutdown(self, grace_s: float | None) -> None:
        """Close the idle connections, wait up to ``grace_s`` for the busy ones, close the rest."""
        self.close_idle()
        self._sweeper.cancel()
        busy = [c.task for c in self.connections if c.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace_s)
        for connection in list(self.connections):
            if connection.task is not None:
                connection.task.cancel()
            connection.close()


class FrontProtocol(asyncio.Protocol):
    """One client connection while the front serves it."""

    __slots__ = (
        "buffer", "front", "idle_since", "last_head", "parsed", "paused", "task", "transport"
    )  # fmt: skip

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.buffer: bytes | bytearray = b""
        self.parsed: Parsed | None = None  # the head of a request whose body is arriving
        self.last_head: LastHead | None = None
        self.task: asyncio.Task[None] | None = None  # the request being answered
        self.paused = False
        self.idle_since = front.loop.time()

    # ------------------------------------------------------------------ asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        tcp_keepalive(self.transport)
        self.front.connections.add(self)
        self.front.metrics.connections_accepted.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self.buffer = b""
        # A request being answered finishes (it may have reached a backend already); its
        # answer goes nowhere and a stream's relay closes the upstream (relay.StreamForwarder).

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            self.buffer += data
        else:
            self.buffer = data
        if self.task is None:
            self.serve_next()
        elif len(self.buffer) > PIPELINE_BYTES and not self.paused:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # close once the client has sent all it will

    # ------------------------------------------------------------------ requests

    def serve_next(self) -> None:
        """Start answering the buffered request, wait for the rest of it, or hand it over."""
        buffer = self.buffer
        parsed = self.parsed
        if parsed is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > HEAD_BYTES or not (
                    buffer.startswith(REQUEST_START)
                    if len(buffer) >= len(REQUEST_START)
                    else REQUEST_START.startswith(buffer)
                ):
                    self.hand_over()
                elif type(buffer) is bytes:
                    self.buffer = bytearray(buffer)  # a head in pieces: gather them cheaply
                return
            parsed = None
            if end <= HEAD_BYTES:
                last = self.last_head
                parsed = last.same(buffer, end) if last is not None else None
                if parsed is None:
                    parsed = parse_head(buffer, end)
                    if parsed is not None:
                        self.last_head = LastHead(buffer, end, parsed)
            if parsed is None or parsed[4] - parsed[3] > self.front.max_body_bytes():
                self.hand_over()
                return
        endpoint, path, fields, start, stop = parsed
        if len(buffer) < stop:
            self.parsed = parsed  # the body is still arriving
            if type(buffer) is bytes:
                self.buffer = bytearray(buffer)
            return
        self.parsed = None
        body = bytes(buffer[start:stop]) if isinstance(buffer, bytearray) else buffer[start:stop]
        rest = buffer[stop:]
        self.buffer = bytearray(rest) if rest else b""
        self.task = self.front.loop.create_task(self.respond(endpoint, path, fields, body))

    def hand_over(self) -> None:
        """From here on, the connection is aiohttp's, beginning with every byte buffered."""
        front, transport = self.front, self.transport
        front.connections.discard(self)
        if transport is None or transport.is_closing():
            return
        front.metrics.connections_handed_over.inc()
        protocol = front.hand_over()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        buffered, self.buffer = self.buffer, b""
        if buffered:
            protocol.data_received(bytes(buffered))

    async def respond(
        self, endpoint: Endpoint, path: bytes, fields: dict[str, str], body: bytes
    ) -> None:
        handlers = self.front.handlers
        close = fields.get("connection", KEEP_ALIVE).lower() == CLOSE
        started = False
        try:
            forwarded = await handlers.forward(endpoint, path, fields, body)
            if not isinstance(forwarded, Forwarded):
                close = self.write_response(forwarded, close)
            elif forwarded.answer.streaming:
                sink = RawSink(self)
                try:
                    await handlers.relay_stream(sink, forwarded)
                finally:
                    started = sink.started
                close = close or self.front.closing
            else:
                error = handlers.settle_buffered(forwarded)
                if error is not None:
                    close = self.write_response(error, close)
                else:
                    close = self.write_answer(forwarded, close)
        except Exception:  # a bug of ours: aiohttp's edge would answer 500 the same way
            log.exception("internal error answering %s", self.peer())
            if not started:
                self.write_response(
                    error_response(500, "The router failed on this request.", "internal_error"),
                    True,
                )
            close = True
        finally:
            self.task = None
            self.idle_since = self.front.loop.time()
        self.after_answer(close)

    def after_answer(self, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if close:
            transport.close()
            return
        if self.paused:
            self.paused = False
            transport.resume_reading()
        if self.buffer:
            self.serve_next()

    # ------------------------------------------------------------------ answers

    def write_answer(self, forwarded: Forwarded, close: bool) -> bool:
        """A backend's complete answer, with the fields aiohttp's path gives it (relay.buffered)."""
        close = close or self.front.closing
        transport = self.transport
        if transport is None or transport.is_closing():
            return True
        answer = forwarded.answer
        upstream = answer.upstream
        body = upstream.body
        transport.write(
            b"HTTP/1.1 %d %b\r\nContent-Type: %b\r\nx-hxp-backend: %b\r\nContent-Length: %d\r\n"
            % (
                upstream.status,
                reason(upstream.status),
                upstream.content_type,
                answer.backend.id.encode(),
                len(body),
            )
            + self.front.tail(close)
            + body
        )
        return close

    def write_response(self, response: web.Response, close: bool) -> bool:
        """One of the router's own answers (a refusal, an error, a cached answer)."""
        close = close or self.front.closing or response.keep_alive is False
        transport = self.transport
        if transport is None or transport.is_closing():
            return True
        body = response.body
        assert isinstance(body, bytes)
        fields = field_lines(
            (name, value)
            for name, value in response.headers.items()
            if name.lower() not in WRITTEN_HERE
        )
        transport.write(
            b"HTTP/1.1 %d %b\r\n%bContent-Length: %d\r\n"
            % (response.status, reason(response.status), fields, len(body))
            + self.front.tail(close)
            + body
        )
        return close

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def peer(self) -> str:
        peername: Any = self.transport.get_extra_info("peername") if self.transport else None
        return str(peername[0]) if peername else "unknown peer"


class RawSink:
    """A stream straight to the front's connection, in chunked transfer coding."""

    def __init__(self, connection: FrontProtocol) -> None:
        self.connection = connection
        self.transport = connection.transport
        self.framed = True
        self.started = False  # the head went out: nothing else can be answered

    def _transport(self) -> asyncio.Transport:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        return transport

    async def begin(self, headers: dict[str, str], first_piece: bytes) -> None:
        transport = self._transport()
        front = self.connection.front
        fields = field_lines(headers.items())
        self.started = True
        transport.write(
            b"HTTP/1.1 200 OK\r\n%bTransfer-Encoding: chunked\r\n" % fields
            + front.tail(front.closing)
            + chunk(first_piece)
        )

    async def write(self, data: bytes) -> None:
        self._transport().write(chunk(data))

    async def end(self) -> None:
        self._transport().write(b"0\r\n\r\n")


def field_lines(fields: Iterable[tuple[str, str]]) -> bytes:
    """Header fields as lines, in UTF-8 as aiohttp writes them.

    A CR or LF inside a name or a value would end the field early and start another: refused
    with ValueError, as aiohttp refuses it.
    """
    lines = [f"{name}: {value}\r\n" for name, value in fields]
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("a CR or LF in a response header field")
    return text.encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


_REASONS: dict[int, bytes] = {}


def reason(status: int) -> bytes:
    phrase = _REASONS.get(status)
    if phrase is None:
        try:
            phrase = HTTPStatus(status).phrase.encode()
        except ValueError:
            phrase = b"Unknown"
        _REASONS[status] = phrase
    return phrase


class FrontServer(EdgeServer):
    """aiohttp's server (``edge``) whose new connections start with the front."""

    front: Front | None = None

    def __call__(self) -> Any:
        return self.front() if self.front is not None else super().__call__()

    def edge_protocol(self) -> asyncio.Protocol:
        return EdgeServer.__call__(self)

    @property
    def connections(self) -> list[Any]:
        front = list(self.front.connections) if self.front is not None else []
        return [*super().connections, *front]

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        if self.front is not None:
            self.front.close_idle()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's
        waits = [super().shutdown(timeout)]
        if self.front is not None:
            waits.append(self.front.shutdown(timeout))
        await asyncio.gather(*waits)


class FrontRunner(EdgeRunner):
    """The gateway's runner: the front first, aiohttp (``EdgeRunner``) for the rest."""

    server_class = FrontServer

    def __init__(self, app: web.Application, gateway: Gateway, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.gateway = gateway
        self.closing = False

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        assert isinstance(server, FrontServer) and self.gateway.handlers is not None
        server.front = Front(self.gateway.handlers, server.edge_protocol)
        return server

    def begin_closing(self) -> None:
        """The router stops: from now on every answer closes its connection."""
        self.closing = True
        if self.front is not None:
            self.front.closing = True

    @property
    def front(self) -> Front | None:
        server = self.server
        return server.front if isinstance(server, FrontServer) else None
