"""The router's edge: requests too broken for a handler, and what the logs may say about them.

aiohttp answers a request its parser refuses (an oversize header, a malformed request line,
bytes a header may not hold, broken chunked framing) without calling the application: its
``RequestHandler.handle_error`` logs the parser's complaint with a traceback and sends it back as
text. The complaint quotes the offending input, and for an oversize header that is the header's
value: the first 100 characters of an ``Authorization`` token went to the journal. Here the
gateway's connections use :class:`EdgeProtocol` instead, which answers in the router's error
format (431 for a line or header too long, 400 for the rest) and logs one line naming the
problem and the peer, never the input. aiohttp has no public hook for this: the classes here
lean on its internals (``Server._kwargs``, ``RequestHandler._current_request`` and
``_messages``, ``_ErrInfo``), which is why aiohttp is pinned and ``tests/unit/router/test_edge``
sends every kind of broken request through them.

:func:`configure_logging` is the daemon's logging: one line per record, and every line (a
traceback included) passed through :func:`~hxp_runtime.router.auth.redact`, for a credential
that reaches a log some other way.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestPayloadError, _ErrInfo

from hxp_runtime.router.auth import redact
from hxp_runtime.router.errors import error_response

log = logging.getLogger(__name__)

# aiohttp's limit on a request line or one header field (its default; the answer says it).
MAX_LINE_BYTES = 8190


# What the parser's complaint starts with -> the answer. Only the start is read: the rest of a
# complaint quotes the input.
_COMPLAINTS = (
    ("Too many headers", 431, "too_many_headers", "The request has too many header fields."),
    ("Received HTTPS traffic", 400, "tls_on_plain_http", "TLS was sent to a plain HTTP port."),
    ("Invalid method", 400, "malformed_request_line", "The request line's method is not valid."),
    ("Bad HTTP method", 400, "malformed_request_line", "The request line's method is not valid."),
    ("Bad status line", 400, "malformed_request_line", "The request line is malformed."),
    ("Invalid header", 400, "malformed_header", "A header field is malformed."),
    ("Invalid HTTP header", 400, "malformed_header", "A header field is malformed."),
    ("Invalid character in chunk", 400, "malformed_body", "The chunked body is malformed."),
    ("Invalid character in Content-Length", 400, "malformed_header", "Content-Length is invalid."),
)


def describe(exc: BaseException | None) -> tuple[int, str, str]:
    """(status, code, message) for a request the parser refused; the message quotes nothing."""
    if isinstance(exc, LineTooLong):
        return (
            431,
            "request_header_too_large",
            f"The request line or a header field is longer than {MAX_LINE_BYTES} bytes.",
        )
    complaint = exc.message if isinstance(exc, HttpProcessingError) else ""
    for start, status, code, message in _COMPLAINTS:
        if complaint.startswith(start):
            return status, code, message
    return 400, "malformed_request", "The request is not valid HTTP."


def peer(request: web.BaseRequest) -> str:
    return request.remote or "unknown peer"


class EdgeProtocol(web.RequestHandler):
    """aiohttp's connection protocol, answering and logging unparseable requests our way."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # aiohttp's C parser queues broken framing in a body being read as the next request
        # and leaves that body open: its handler would wait for the client forever. Fail the
        # body instead (pipeline.read_body answers 400); the connection closes after it.
        request = self._current_request
        if (
            request is not None
            and self._messages
            and isinstance(self._messages[-1][0], _ErrInfo)
            and not request.content.is_eof()
        ):
            request.content.set_exception(RequestPayloadError("malformed body framing"))

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # Reading away the rest of a body whose framing broke fails once more after the
        # handler answered and logged it: not a second line, and not a traceback.
        if not isinstance(kwargs.get("exc_info"), RequestPayloadError):
            super().log_exception(*args, **kwargs)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer has begun; no error answer can follow")
        if status == 504:
            log.warning("request from %s: the handler timed out", peer(request))
            response = error_response(504, "The request timed out.", "timeout")
        elif status >= 500:
            # A bug of ours, not the client's input: the traceback helps (and is redacted).
            log.error("internal error answering %s", peer(request), exc_info=exc)
            response = error_response(500, "The router failed on this request.", "internal_error")
        else:
            status, code, text = describe(exc)
            log.warning("bad request from %s: %s", peer(request), text)
            response = error_response(status, text, code)
        response.force_close()
        return response


class EdgeServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return EdgeProtocol(self, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """``web.AppRunner`` whose connections speak :class:`EdgeProtocol`."""

    server_class: type[EdgeServer] = EdgeServer

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return self.server_class(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(level: str, *, journal: bool, stream: TextIO | None = None) -> None:
    """The daemon's logging: under systemd the journal stamps every line; elsewhere we do."""
    stamp = "" if journal else "%(asctime)s "
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        RedactingFormatter(stamp + "%(levelname)s %(name)s[%(process)d]: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
