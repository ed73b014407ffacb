"""OpenAI-style error answers: ``{"error": {"message", "type", "param", "code"}}``.

The official clients turn the status into their exception classes (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 413/422 as APIStatusError, 429 RateLimitError, 5xx
InternalServerError), so the status matters as much as the body.

Every error a client sees has this shape, also when a backend answered the error: vLLM's own
shape (``{"error": {"message", "type": "BadRequestError", "param", "code": 400}}``), FastAPI's
``{"detail": ...}``, its API-key middleware's ``{"error": "Unauthorized"}`` and plain text are
mapped by :func:`upstream_error`, which keeps the backend's message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from hxp_runtime.router.auth import redact

ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}
# A backend's message is relayed, not its whole page: enough for vLLM's longest validation
# messages, bounded for a backend that answers with a megabyte of HTML.
UPSTREAM_MESSAGE_CHARS = 2000
# The backend refused the router's own credential (router.upstream_api_key): not the client's
# fault, so not the client's 401.
UPSTREAM_AUTH_STATUSES = frozenset({401, 403, 407})


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    error = {"message": message, "type": error_type(status), "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def error_response(
    status: int,
    message: str,
    code: str,
    headers: Mapping[str, str] | None = None,
    param: str | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(status, message, code, param),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def upstream_details(status: int, body: bytes) -> tuple[str, str | None, str | None]:
    """(message, param, code) of a backend's error answer, whatever its shape.

    ``code`` is kept only when it is a string (OpenAI's codes); vLLM's is the status again.
    """
    text = body.decode("utf-8", "replace").strip()
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    message, param, code = text, None, None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, str):
            message = error
        elif isinstance(error, dict):
            found = error.get("message", error.get("detail"))
            if found is not None:
                message = found if isinstance(found, str) else json.dumps(found)
            param = error.get("param") if isinstance(error.get("param"), str) else None
            code = error.get("code") if isinstance(error.get("code"), str) else None
    if not message:
        message = _phrase(status)
    if len(message) > UPSTREAM_MESSAGE_CHARS:
        message = message[:UPSTREAM_MESSAGE_CHARS] + " [...]"
    return redact(message), param, code


def upstream_message(status: int, body: bytes) -> str:
    return upstream_details(status, body)[0]


def upstream_error(status: int, body: bytes) -> web.Response:
    """A backend's 4xx answer in the router's shape (a 5xx is retried, then ``attempts``'s
    502 says the last one's message)."""
    message, param, code = upstream_details(status, body)
    if status in UPSTREAM_AUTH_STATUSES:
        return error_response(
            502,
            f"The backend refused the router's credentials (HTTP {status}: {message}); "
            "check router.upstream_api_key.",
            "upstream_auth_failed",
        )
    return error_response(status, message, code or "upstream_error", param=param)


# How a backend's error event starts inside a stream (vLLM sends one when generation fails
# after the head went out); a JSON string value cannot hold these bytes unescaped.
UPSTREAM_ERROR_EVENT = b'data: {"error"'


def upstream_error_events(piece: bytes) -> bytes:
    """``piece`` of an SSE stream with every backend error event in the router's shape.

    The status is the one the backend put in the event (vLLM's ``code``), else 500.
    """
    events = piece.split(b"\n\n")
    for i, event in enumerate(events):
        if not event.startswith(UPSTREAM_ERROR_EVENT):
            continue
        data = event.removeprefix(b"data: ")
        try:
            found = json.loads(data)["error"].get("code")
        except (ValueError, KeyError, AttributeError):
            found = None
        status = found if isinstance(found, int) and 400 <= found <= 599 else 500
        message, param, code = upstream_details(status, data)
        events[i] = b"data: " + error_body(status, message, code or "upstream_error", param)
    return b"\n\n".join(events)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
