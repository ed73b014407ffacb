"""A lean HTTP/1.1 client for the proxy's hot path: keep-alive pools of raw asyncio protocols.

Why not aiohttp's ClientSession here: on one core its per-request bookkeeping (request and
response objects, header multidicts, tracing hooks, cookie jar, timeout contexts) costs more CPU
than the whole budget the router has per request (about 150 µs, see docs/benchmarks.md). The
upstreams are known vLLM servers speaking plain HTTP/1.1 on a trusted network, so a small,
strict client is enough: one precomputed request head per (backend, path), Content-Length or
chunked responses, keep-alive reuse, a hard deadline per exchange, and back-pressure for
streams. The process's aiohttp ClientSession still does everything off the hot path (health
checks, metrics polling, embeddings).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Final, cast
from urllib.parse import urlsplit

MAX_HEAD_BYTES: Final = 64 * 1024
# A stream's reader pauses the socket when the client is slower than the model.
STREAM_HIGH_WATER: Final = 1 << 20
MAX_IDLE_PER_BACKEND: Final = 256

_HEAD_END: Final = b"\r\n\r\n"
_CRLF: Final = b"\r\n"
# Parser states.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE = range(8)


class UpstreamError(Exception):
    """An exchange with a backend failed; ``reason`` is a bounded metric label value."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class UpstreamResponse:
    """Status, content type and (buffered mode) body of one upstream response.

    In streaming mode ``read()`` returns the next decoded body bytes as they arrive (pieces that
    arrived together are returned at once) and ``b""`` at the end; ``close()`` gives the
    connection back.
    """

    __slots__ = ("_conn", "body", "content_type", "status")

    def __init__(self, conn: Connection, status: int, content_type: bytes) -> None:
        self._conn = conn
        self.status = status
        self.content_type = content_type
        self.body = b""

    async def read(self) -> bytes:
        return await self._conn.read_piece()

    def relay(self, sink: Callable[[bytes], None]) -> asyncio.Future[None]:
        """Hand every further piece to ``sink`` from the protocol callback, as it arrives.

        No task switch per piece: a stream's pieces go from the backend's socket to the
        client's within one callback. The future resolves at the end of the body, or fails
        with the UpstreamError that ended it.
        """
        return self._conn.relay(sink)

    def pause(self) -> None:
        self._conn.pause_reading()

    def resume(self) -> None:
        self._conn.resume_reading()

    async def read_all(self) -> bytes:
        pieces = []
        while piece := await self.read():
            pieces.append(piece)
        return b"".join(pieces)

    def close(self) -> None:
        self._conn.finish_stream()


class Connection(asyncio.Protocol):
    """One keep-alive connection; parses the response to the request it sent last."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0
        self._buf = b""
        self._state = _IDLE
        self._buffered = True
        self._remaining = 0
        self._status = 0
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._response: UpstreamResponse | None = None
        # The deadline of the exchange under way, and the timer that enforces it. The timer is
        # not cancelled when an exchange ends: a connection's next exchange reuses it, and a
        # timer that fires early for it is set again (``_check_deadline``). One timer per
        # request, made and cancelled, cost more than the rest of the exchange's bookkeeping.
        self._deadline = 0.0
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # Streaming: decoded pieces not yet read, and the reader waiting for more.
        self._pieces: deque[bytes] = deque()
        self._queued = 0
        self._paused = False
        self._done = False
        self._error: UpstreamError | None = None
        self._reader: asyncio.Future[None] | None = None
        # Relaying: every piece goes to the sink at once (see UpstreamResponse.relay).
        self._sink: Callable[[bytes], None] | None = None
        self._relayed: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._drop_timer()
        if self._state == _UNTIL_CLOSE:
            self._complete()
        elif self._state != _IDLE:
            self._fail(UpstreamError("reset", "the backend closed the connection mid-response"))

    def eof_received(self) -> bool | None:
        self.keep_alive = False
        return None

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE:
            # Bytes nobody asked for: the connection cannot be trusted any more.
            self.abort()
            return
        self._buf = self._buf + data if self._buf else data
        try:
            self._parse()
        except ValueError as exc:
            self._fail(UpstreamError("protocol", f"malformed response from the backend: {exc}"))
            self.abort()

    # ------------------------------------------------------------------ sending

    @property
    def answered(self) -> bool:
        """Whether a response head arrived for the current request."""
        return self._status != 0

    def send(
        self, request: bytes, deadline: float, *, buffered: bool
    ) -> asyncio.Future[UpstreamResponse]:
        """Write one request; the future resolves at the response head (streaming) or end.

        The deadline (a ``loop.time()`` value) guards the whole exchange, stream included.
        """
        assert self.transport is not None
        self._state = _HEAD
        self._buffered = buffered
        self._status = 0
        self._body = []
        self._pieces.clear()
        self._queued = 0
        self._done = False
        self._error = None
        self._response = None
        self._sink = None
        self._relayed = None
        waiter = self.pool.loop.create_future()
        self._waiter = waiter
        self._deadline = deadline
        self._busy = True
        if self._timer is None or self._timer_at > deadline:
            self._arm(deadline)
        self.transport.write(request)
        return waiter

    def abort(self) -> None:
        self.closed = True
        self._drop_timer()
        if self.transport is not None:
            self.transport.abort()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.pool.loop.call_at(when, self._check_deadline)

    def _drop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _check_deadline(self) -> None:
        """The timer fired: expire the exchange under way if its deadline passed, else wait on."""
        self._timer = None
        if not self._busy:
            return  # armed for an exchange that ended in time; the next one arms its own
        if self.pool.loop.time() < self._deadline:
            self._arm(self._deadline)  # armed for an earlier exchange's deadline
            return
        self.expire()

    def expire(self) -> None:
        """The exchange's deadline passed: fail whoever waits and drop the connection."""
        self._fail(UpstreamError("timeout", "the backend did not answer before the deadline"))
        self.abort()

    # ------------------------------------------------------------------ parsing

    def _parse(self) -> None:  # noqa: PLR0912 - one state machine reads best in one place
        while self._buf:
            state = self._state
            if state == _HEAD:
                end = self._buf.find(_HEAD_END)
                if end < 0:
                    if len(self._buf) > MAX_HEAD_BYTES:
                        raise ValueError("response head too large")
                    return
                head, self._buf = self._buf[:end], self._buf[end + 4 :]
                self._parse_head(head)
            elif state in (_LENGTH, _CHUNK_DATA):
                take = self._buf[: self._remaining]
                self._buf = self._buf[len(take) :]
                self._remaining -= len(take)
                self._deliver(take)
                if self._remaining == 0:
                    if state == _LENGTH:
                        self._complete()
                    else:
                        self._state = _CHUNK_CRLF
            elif state == _CHUNK_SIZE:
                end = self._buf.find(_CRLF)
                if end < 0:
                    return
                size = int(self._buf[:end].split(b";", 1)[0], 16)
                self._buf = self._buf[end + 2 :]
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILERS
            elif state == _CHUNK_CRLF:
                if len(self._buf) < 2:
                    return
                if self._buf[:2] != _CRLF:
                    raise ValueError("chunk not followed by CRLF")
                self._buf = self._buf[2:]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = self._buf.find(_CRLF)
                if end < 0:
                    return
                self._buf = self._buf[end + 2 :]
                if end == 0:
                    self._complete()
            elif state == _UNTIL_CLOSE:
                data, self._buf = self._buf, b""
                self._deliver(data)
            else:
                raise ValueError("unexpected bytes after the response")

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(_CRLF)
        status_line = lines[0]
        if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
            raise ValueError(f"bad status line {status_line[:40]!r}")
        status = int(status_line[9:12])
        length = -1
        chunked = False
        content_type = b""
        keep_alive = status_line[7:8] == b"1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-type":
                content_type = value.strip()
            elif name == b"connection":
                token = value.strip().lower()
                keep_alive = token != b"close" and (keep_alive or token == b"keep-alive")
        if status < 200:  # 100 Continue and friends: the real head follows
            return
        self.keep_alive = self.keep_alive and keep_alive
        self._status = status
        self._response = UpstreamResponse(self, status, content_type)
        if chunked:
            self._state = _CHUNK_SIZE
        elif length >= 0:
            self._remaining = length
            self._state = _LENGTH
        else:
            self.keep_alive = False
            self._state = _UNTIL_CLOSE
        if not self._buffered:
            self._resolve()
        if self._state == _LENGTH and length == 0:
            self._complete()

    def _deliver(self, data: bytes) -> None:
        if not data:
            return
        if self._buffered:
            self._body.append(data)
            return
        if self._sink is not None:
            self._sink(data)
            return
        self._pieces.append(data)
        self._queued += len(data)
        if self._queued > STREAM_HIGH_WATER:
            self.pause_reading()
        self._wake_reader()

    def _complete(self) -> None:
        self._state = _IDLE
        self._done = True
        if not self._buffered:
            self._wake_reader()
            relayed, self._relayed = self._relayed, None
            if relayed is not None and not relayed.done():
                relayed.set_result(None)
            return
        self._end_exchange()
        response = self._response
        assert response is not None
        response.body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        self._resolve()
        self.pool.release(self)

    def _resolve(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            assert self._response is not None
            waiter.set_result(self._response)

    def _end_exchange(self) -> None:
        """The exchange is over: its deadline no longer applies (the timer may stay armed)."""
        self._busy = False

    def _fail(self, error: UpstreamError) -> None:
        self._end_exchange()
        self._state = _IDLE
        self.keep_alive = False
        self._error = error
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._wake_reader()
        relayed, self._relayed = self._relayed, None
        if relayed is not None and not relayed.done():
            relayed.set_exception(error)

    # ------------------------------------------------------------------ streaming reads

    def _wake_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.set_result(None)

    async def read_piece(self) -> bytes:
        while not self._pieces:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._reader = self.pool.loop.create_future()
            await self._reader
        data = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces.clear()
        self._queued = 0
        self.resume_reading()
        return data

    def relay(self, sink: Callable[[bytes], None]) -> asyncio.Future[None]:
        relayed = self.pool.loop.create_future()
        while self._pieces:
            sink(self._pieces.popleft())
        self._queued = 0
        self.resume_reading()
        if self._error is not None:
            relayed.set_exception(self._error)
        elif self._done:
            relayed.set_result(None)
        else:
            self._sink = sink
            self._relayed = relayed
        return relayed

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def finish_stream(self) -> None:
        self._end_exchange()
        if self._done and self._error is None and not self._pieces:
            self.pool.release(self)
        else:
            # Closed before its end (the client left): wake whoever still waits on it.
            self._fail(UpstreamError("closed", "the stream was closed before its end"))
            self.abort()


class UpstreamPool:
    """Keep-alive connections to one backend (``http://host:port``), reused newest first.

    Connections idle longer than ``idle_timeout_s`` are dropped before the backend drops them
    (uvicorn, which vLLM runs on, closes idle keep-alive connections after 5 s).
    """

    def __init__(
        self,
        url: str,
        *,
        authorization: str | None = None,
        idle_timeout_s: float = 4.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"backend URL {url!r} must look like http://host:port")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.idle_timeout_s = idle_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._netloc = parts.netloc.encode()
        self._authorization = (
            b"authorization: Bearer " + authorization.encode() + _CRLF if authorization else b""
        )
        self._heads: dict[bytes, bytes] = {}
        self._idle: list[Connection] = []
        self.loop = asyncio.get_running_loop()

    def request_head(self, path: bytes) -> bytes:
        """The request head up to the Content-Length value, built once per path."""
        head = self._heads.get(path)
        if head is None:
            head = (
                b"POST " + path + b" HTTP/1.1\r\nhost: " + self._netloc + _CRLF
                + b"content-type: application/json\r\naccept: */*\r\n"
                + self._authorization
                + b"content-length: "
            )  # fmt: skip
            self._heads[path] = head
        return head

    async def _connect(self, deadline: float) -> Connection:
        try:
            async with asyncio.timeout_at(min(deadline, self.loop.time() + self.connect_timeout_s)):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self), self.host, self.port
                )
        except TimeoutError:
            raise UpstreamError("timeout", f"{self.url}: connecting timed out") from None
        except OSError as exc:
            raise UpstreamError("connect", f"{self.url}: {exc.strerror or exc}") from None
        return conn

    def _take_idle(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout_s:
                return conn
            conn.abort()
        return None

    def release(self, conn: Connection) -> None:
        if conn.closed or not conn.keep_alive or len(self._idle) >= MAX_IDLE_PER_BACKEND:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def post(
        self, path: bytes, body: bytes, deadline: float, *, buffered: bool
    ) -> UpstreamResponse:
        """POST ``body``; return the whole response (buffered) or its head (streaming).

        A streamed response must be closed (``UpstreamResponse.close``) to give the connection
        back. ``deadline`` is a ``loop.time()`` value.
        """
        request = self.request_head(path) + str(len(body)).encode() + _HEAD_END + body
        conn = self._take_idle()
        if conn is not None:
            try:
                return await conn.send(request, deadline, buffered=buffered)
            except asyncio.CancelledError:
                conn.abort()
                raise
            except UpstreamError as exc:
                # A reused connection the backend had just closed: the request never reached
                # it, so sending it again on a fresh connection duplicates nothing.
                if exc.reason != "reset" or conn.answered:
                    raise
        conn = await self._connect(deadline)
        try:
            return await conn.send(request, deadline, buffered=buffered)
        except asyncio.CancelledError:
            conn.abort()
            raise

    def close(self) -> None:
        for conn in self._idle:
            conn.abort()
        self._idle.clear()
