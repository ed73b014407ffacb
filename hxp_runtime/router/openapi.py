"""The router's OpenAPI document, served at /openapi.json."""

from __future__ import annotations

from typing import Any

_JSON = "application/json"
_ERROR = {
    "description": "An OpenAI-style error",
    "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_ERRORS = {
    str(status): {**_ERROR, "description": meaning}
    for status, meaning in {
        400: "The request body is not valid JSON or not a valid request, or the request is "
        "not valid HTTP",
        401: "Missing, unknown or revoked API key",
        404: "Unknown model",
        413: "The request body is larger than router.max_body_bytes",
        422: "The backend refused the request (its message is kept)",
        429: "The key's rate limit is exhausted (see Retry-After)",
        431: "The request line or a header field is too long, or there are too many headers",
        502: "The backends failed to answer, or refused the router's own key",
        503: "No healthy backend serves the model, or the router is draining",
        504: "The request's deadline passed",
    }.items()
}


def _proxied(summary: str, streams: bool) -> dict[str, Any]:
    content: dict[str, Any] = {_JSON: {"schema": {"type": "object"}}}
    if streams:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "parameters": [
                {
                    "name": "X-HXP-Category",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "task category hint for model 'auto' (hierarchical routing)",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": {"$ref": "#/components/schemas/ModelRequest"}}},
            },
            "responses": {
                "200": {"description": "The backend's answer, passed through", "content": content},
                **_ERRORS,
            },
        }
    }


def _plain(summary: str, content_type: str = _JSON) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {"200": {"description": "OK", "content": {content_type: {}}}},
        }
    }


def openapi_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hxp router",
            "version": version,
            "description": "OpenAI-compatible gateway in front of vLLM model servers. "
            "'model' may be a model name, an alias, or 'auto' (chosen by the routing strategies).",
        },
        "paths": {
            "/v1/chat/completions": _proxied("Chat completion (SSE when stream is true)", True),
            "/v1/completions": _proxied("Text completion (SSE when stream is true)", True),
            "/v1/embeddings": _proxied("Embeddings", False),
            "/v1/models": {
                "get": {
                    "summary": "Healthy models, their aliases, and 'auto'",
                    "security": [{"bearer": []}],
                    "responses": {"200": {"description": "OK", "content": {_JSON: {}}}},
                }
            },
            "/health": _plain("Liveness: the process answers"),
            "/ready": _plain("Readiness: a backend is healthy and the router is not draining"),
            "/metrics": _plain("Prometheus metrics", "text/plain"),
            "/openapi.json": _plain("This document"),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "ModelRequest": {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "model": {"type": "string"},
                        "stream": {"type": "boolean"},
                        "temperature": {"type": "number"},
                    },
                    "additionalProperties": True,
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                        }
                    },
                },
            },
        },
    }
