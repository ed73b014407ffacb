"""The request path before any backend is asked, as named steps.

A proxied request goes through, in order: :func:`authenticate` (a dict hit for a known key),
:func:`read_body` (at most ``max_body_bytes``), :func:`parse` (the body as an OpenAI request),
:func:`admit` (the key's rate limits, a counter while its lease lasts), :func:`route` (model
choice through the strategies, an LRU hit plus live ordering) and :func:`cached_answer` (the
response cache, temperature 0 only). Each step either returns what the next one needs or raises
:class:`Rejected` with the answer the router gives itself; the handler turns that into the
response and its metrics. The attempts at the backends (``attempts``) and the relay of their
answer (``relay``) follow.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from hxp_runtime.config import RateLimit
from hxp_runtime.router import cache as response_cache
from hxp_runtime.router.auth import KeyStore, Miss
from hxp_runtime.router.errors import error_response
from hxp_runtime.router.flight import shared_call
from hxp_runtime.router.metrics import RouterMetrics
from hxp_runtime.router.ratelimit import RateLimiter
from hxp_runtime.router.semantic import Embedder, EmbeddingError
from hxp_runtime.router.settings import AUTO_MODEL
from hxp_runtime.router.store import ApiKey
from hxp_runtime.router.strategies import (
    Backend,
    Decision,
    Endpoint,
    ModelChoice,
    RouteRequest,
    RoutingError,
    RoutingTable,
    Stats,
)

log = logging.getLogger(__name__)

ANONYMOUS = ApiKey("anonymous")
CATEGORY_HEADER = "X-HXP-Category"


class Rejected(Exception):
    """The router answers the request itself with ``response``.

    ``model`` is what routing chose, once it chose one, so that the model's error-budget
    alerts count the refusal.
    """

    def __init__(self, response: web.Response, model: str = "") -> None:
        super().__init__(response.status)
        self.response = response
        self.model = model


# Not frozen, like Routed: a frozen dataclass pays an object.__setattr__ per field, about 1 µs
# per request here (docs/benchmarks.md: the whole budget is about 150 µs).
@dataclass(slots=True)
class ClientRequest:
    """What the client asked for, parsed once."""

    endpoint: Endpoint
    path: bytes
    body: bytes
    payload: dict[str, Any]
    model: str | None
    stream: bool


@dataclass(slots=True)
class Routed:
    """Where the request goes; ``primary`` is the model routing chose before health and
    breakers narrowed the attempts (the model a refusal is counted against)."""

    decision: Decision
    primary: str

    @property
    def first(self) -> Backend:
        return self.decision.attempts[0]


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """The response cache's key for this request (None: not cacheable) and its hit."""

    key: str | None = None
    body: bytes | None = None


NOT_CACHED = CacheLookup()
# json.loads(bytes) guesses the encoding in Python (BOMs, UTF-16/32) before decoding; a body that
# opens an object with "{" then a byte other than NUL is UTF-8 by the same rules, and is decoded
# directly, exactly as json.loads would decode it.
_DECODE = json.JSONDecoder().decode


def unauthorized() -> web.Response:
    return error_response(
        401,
        "Missing or invalid API key: send 'Authorization: Bearer <key>' (hxp keys create).",
        "invalid_api_key",
    )


def draining() -> Rejected:
    return Rejected(error_response(503, "The router is shutting down.", "draining"))


# --------------------------------------------------------------------------- authenticate


async def authenticate(keys: KeyStore, required: bool, authorization: str | None) -> ApiKey:
    """The caller's key, or the anonymous one when keys are not required."""
    key = known_key(keys, required, authorization)
    return await look_up_key(keys, authorization) if isinstance(key, Miss) else key


def known_key(keys: KeyStore, required: bool, authorization: str | None) -> ApiKey | Miss:
    """The key when it is known without I/O (a hash and a dict hit), MISS when only PostgreSQL
    can tell; an unknown key is refused.

    The hot path calls this and awaits :func:`look_up_key` only on a MISS: a coroutine per
    request for a dict hit is a measurable part of the router's cost (docs/benchmarks.md).
    """
    if not required:
        return ANONYMOUS
    key = keys.cached(authorization)
    if key is None:
        raise Rejected(unauthorized())
    return key


async def look_up_key(keys: KeyStore, authorization: str | None) -> ApiKey:
    """A key the cache cannot tell, asked of PostgreSQL (one query per key at a time)."""
    key = await keys.authenticate(authorization)
    if key is None:
        raise Rejected(unauthorized())
    return key


# --------------------------------------------------------------------------- read the body


def body_too_large(limit: int) -> Rejected:
    response = error_response(
        413,
        f"The request body is larger than this router accepts ({limit} bytes, "
        "router.max_body_bytes).",
        "request_too_large",
    )
    # The client may still be sending: aiohttp reads the rest away, then closes.
    response.force_close()
    return Rejected(response)


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole body, refused with 413 once it is known to exceed ``limit`` bytes.

    A Content-Length over the limit is refused before a byte is read; a chunked (or
    compressed) body is refused as soon as what arrived passes it, never buffered further.
    """
    length = request.content_length
    if length is not None and length > limit:
        raise body_too_large(limit)
    content = request.content
    pieces = []
    size = 0
    try:
        while piece := await content.readany():
            size += len(piece)
            if size > limit:
                raise body_too_large(limit)
            pieces.append(piece)
            if content.at_eof():
                break  # all of it arrived: no second readany (a coroutine) to be told so
    except RequestPayloadError:
        log.warning("bad request from %s: the body's framing is broken", request.remote)
        raise Rejected(
            error_response(400, "The request body's framing is broken.", "malformed_body")
        ) from None
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


# --------------------------------------------------------------------------- parse


def parse(endpoint: Endpoint, path: bytes, body: bytes) -> ClientRequest:
    try:
        if body[:1] == b"{" and body[1:2] != b"\x00":
            payload = _DECODE(body.decode("utf-8", "surrogatepass"))
        else:
            payload = json.loads(body)
    except ValueError as exc:
        raise Rejected(
            error_response(400, f"The body is not valid JSON: {exc}", "invalid_json")
        ) from None
    except RecursionError:
        raise Rejected(
            error_response(400, "The body's JSON nests too deeply.", "invalid_json")
        ) from None
    if type(payload) is not dict:
        raise Rejected(error_response(400, "The body must be a JSON object.", "invalid_request"))
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise Rejected(error_response(400, "'model' must be a string.", "invalid_model"))
    stream = endpoint is not Endpoint.EMBEDDING and payload.get("stream") is True
    return ClientRequest(endpoint, path, body, payload, model, stream)


def prompt_of(endpoint: Endpoint, payload: dict[str, Any]) -> str:
    """The text routing looks at: the last user message, the prompt, or the input."""
    if endpoint is Endpoint.CHAT:
        for message in reversed(payload.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text(message.get("content"))
        return ""
    return _text(payload.get("prompt" if endpoint is Endpoint.COMPLETION else "input"))


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") if isinstance(p, dict) else p for p in content)
        return " ".join(p for p in parts if isinstance(p, str) and p)
    return ""


# --------------------------------------------------------------------------- admit


def limits_of(key: ApiKey, defaults: RateLimit) -> tuple[int, int]:
    """(requests, tokens) per minute: the key's own limits, else the router's."""
    return (
        key.requests_per_minute or defaults.requests_per_minute,
        key.tokens_per_minute or defaults.tokens_per_minute,
    )


async def admit(limiter: RateLimiter, key: ApiKey, defaults: RateLimit) -> None:
    """Charge one request to the key's buckets, or refuse it with 429 and a Retry-After."""
    if not limiter.admit_leased(key.name):
        await admit_from_buckets(limiter, key, defaults)


async def admit_from_buckets(limiter: RateLimiter, key: ApiKey, defaults: RateLimit) -> None:
    """The key's lease in this worker ran out (``RateLimiter.admit_leased`` said no, as the hot
    path asks first, without I/O): charge the shared buckets, or refuse with 429."""
    requests_per_minute, tokens_per_minute = limits_of(key, defaults)
    retry_after = await limiter.admit(key.name, requests_per_minute, tokens_per_minute)
    if retry_after is None:
        return
    seconds = max(1, round(retry_after + 0.5))
    raise Rejected(
        error_response(
            429,
            f"Rate limit reached for key {key.name!r} ({requests_per_minute} requests, "
            f"{tokens_per_minute} tokens per minute); retry after {seconds} s.",
            "rate_limit_exceeded",
            {"Retry-After": str(seconds)},
        )
    )


# --------------------------------------------------------------------------- route


def route_request(
    table: RoutingTable, request: ClientRequest, category: str | None, session: str | None
) -> RouteRequest:
    """What routing reads: the model asked for ("auto": none), else the prompt and a hint;
    with prefix_affinity on, the prompt's prefix hashes or the session's hash."""
    wanted = None if request.model in (None, AUTO_MODEL) else request.model
    prompt = prompt_of(request.endpoint, request.payload) if wanted is None else ""
    if table.prefix_enabled and session and len(session) > table.prefix.session_max_chars:
        # The value is the client's: it is neither echoed nor logged.
        raise Rejected(
            error_response(
                400,
                f"The {table.prefix.session_header} header is longer than "
                f"{table.prefix.session_max_chars} characters; send a shorter session id.",
                "invalid_session",
            )
        )
    affinity = table.affinity(request.endpoint, request.payload, session)
    return RouteRequest(request.endpoint, wanted, prompt, category, affinity=affinity)


async def choose_models(
    table: RoutingTable,
    request: RouteRequest,
    embedder: Embedder | None,
    metrics: RouterMetrics | None = None,
) -> ModelChoice:
    """The model-choice stage, from the decision cache when it remembers this request.

    A prompt the cache does not know costs one embeddings call, shared by every request that
    asks with the same prompt while it is in flight (without that, a burst of one new prompt
    queued as many identical calls at the embeddings server, each one slower than the last).
    The time a semantic choice took is observed in ``metrics``, by how it was made.
    """
    cache_key = table.cache_key(request)
    choice = known_choice(table, request, cache_key, embedder, metrics)
    if choice is None:
        choice = await embedded_choice(table, request, cache_key, embedder, metrics)
    return choice


def known_choice(
    table: RoutingTable,
    request: RouteRequest,
    cache_key: object,
    embedder: Embedder | None,
    metrics: RouterMetrics | None = None,
) -> ModelChoice | None:
    """The model choice when it needs no embeddings call; None when it does.

    A prompt the decision cache does not know is decided here by the static table when the
    table is sure of it (``router.semantic.static``).

    The hot path awaits :func:`embedded_choice` only on None, as with keys (``known_key``).
    """
    if embedder is None or not table.needs_embedding(request):
        choice = table.cache.get(cache_key)
        return choice if choice is not None else _choose(table, request, cache_key, remember=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    choice = table.cache.get(cache_key)
    path = "cached"
    if choice is None and table.static is not None:
        vector = table.static.confident(request.prompt)
        if vector is None:
            return None
        static = replace(request, embedding=vector, static=True)
        choice, path = _choose(table, static, cache_key, remember=True), "static"
    if choice is not None and metrics is not None:
        metrics.model_choice(path, loop.time() - started)
    return choice


async def embedded_choice(
    table: RoutingTable,
    request: RouteRequest,
    cache_key: object,
    embedder: Embedder | None,
    metrics: RouterMetrics | None = None,
) -> ModelChoice:
    """The choice for a prompt the decision cache does not know, made with its embedding."""
    assert embedder is not None  # known_choice answers every request when there is none
    loop = asyncio.get_running_loop()
    started = loop.time()
    made, embedded = await shared_call(
        table.cache.pending,
        cache_key,
        lambda: _choose_semantic(table, request, cache_key, embedder),
    )
    if metrics is not None:
        metrics.model_choice("embedded" if embedded else "failed", loop.time() - started)
    return made


async def _choose_semantic(
    table: RoutingTable, request: RouteRequest, cache_key: object, embedder: Embedder
) -> tuple[ModelChoice, bool]:
    """The choice with the prompt's embedding, and whether the embedding was had.

    A choice made without it (the embeddings backend failed) is not remembered, so that the
    next request with this prompt gets a semantic choice.
    """
    try:
        (embedding,) = await embedder.embed([request.prompt])
    except EmbeddingError as exc:
        log.warning("semantic routing skipped: %s", exc)
        return _choose(table, request, cache_key, remember=False), False
    return _choose(table, replace(request, embedding=embedding), cache_key, remember=True), True


def _choose(
    table: RoutingTable, request: RouteRequest, cache_key: object, *, remember: bool
) -> ModelChoice:
    try:
        choice = table.choose_models(request)
    except RoutingError as exc:
        raise Rejected(error_response(exc.status, exc.message, exc.code)) from None
    if remember:
        table.cache.put(cache_key, choice)
    return choice


async def route(
    table: RoutingTable,
    stats: Stats,
    request: ClientRequest,
    category: str | None,
    session: str | None,
    embedder: Embedder | None,
    metrics: RouterMetrics,
) -> Routed:
    """Model choice, then live choice over the available replicas and the fallbacks.

    Every strategy that took part is counted, also when no backend is left to try.
    """
    wanted = route_request(table, request, category, session)
    choice = await choose_models(table, wanted, embedder, metrics)
    return live_route(table, stats, wanted, choice, metrics)


def live_route(
    table: RoutingTable,
    stats: Stats,
    wanted: RouteRequest,
    choice: ModelChoice,
    metrics: RouterMetrics,
) -> Routed:
    """The live stage of :func:`route` once the model choice is made."""
    decision = table.decide(wanted, stats, choice)
    primary = choice[0][0].model
    metrics.decided(decision.strategies)
    if not decision.attempts:
        raise Rejected(
            error_response(
                503,
                "No healthy backend can serve this model now; retry later.",
                "no_healthy_backend",
            ),
            primary,
        )
    return Routed(decision, primary)


# --------------------------------------------------------------------------- cached answer


async def cached_answer(
    cache: response_cache.ResponseCache | None,
    request: ClientRequest,
    routed: Routed,
    metrics: RouterMetrics,
) -> CacheLookup:
    """The cached answer of the first model to try, for deterministic requests only."""
    if cache is None or not response_cache.cacheable(request.payload):
        return NOT_CACHED
    key = response_cache.cache_key(request.path, routed.first.model, request.body)
    body = await cache.get(key)
    metrics.cache.labels("hit" if body is not None else "miss").inc()
    return CacheLookup(key, body)
