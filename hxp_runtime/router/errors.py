"""OpenAI-style error answers: ``{"error": {"message", "type", "param", "code"}}``.

The official clients turn the status into their exception classes (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError), so the
status matters as much as the body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}


def error_body(status: int, message: str, code: str) -> bytes:
    error = {"message": message, "type": ERROR_TYPES.get(status, "server_error"), "param": None}
    return json.dumps({"error": {**error, "code": code}}).encode()


def error_response(
    status: int, message: str, code: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(status, message, code),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
