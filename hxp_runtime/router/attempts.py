"""The attempts at the backends: which replica next, retries with backoff, the fallback chain.

The first model routing chose gets ``1 + retries.attempts`` tries spread over its replicas,
each fallback model one pass. A backend whose circuit breaker is open is skipped; every
failure (no connection, a reset, a timeout, a 5xx) counts against its breaker and the next
backend is tried, until an answer comes, the deadline passes or the order runs out. A stream
counts as answered once its first bytes arrived: only then is anything committed to the
client (``relay``), so retries and fallbacks never duplicate output. A backend drained
(``admin``) while a request waited for its turn is skipped at the last moment: once every
worker has seen a drain, not one more request starts there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hxp_runtime.config import Retries
from hxp_runtime.router.backends import BackendRuntime
from hxp_runtime.router.errors import error_response, upstream_message
from hxp_runtime.router.metrics import RouterMetrics
from hxp_runtime.router.pipeline import ClientRequest, Rejected, Routed
from hxp_runtime.router.strategies import Backend, Decision
from hxp_runtime.router.upstream import UpstreamError, UpstreamResponse


def attempt_order(decision: Decision, retries: int) -> Iterator[Backend]:
    """The first model gets 1 + retries tries across its replicas, each fallback one pass."""
    attempts = decision.attempts
    primary = [b for b in attempts if b.model == attempts[0].model]
    tries = 1 + retries
    for i in range(max(tries, len(primary))):
        yield primary[i % len(primary)]
    yield from attempts[len(primary) :]


class Backoff:
    """Waits between tries of one model: ``backoff_s``, then doubling; none for a new model."""

    def __init__(self, backoff_s: float) -> None:
        self.backoff_s = backoff_s
        self._model: str | None = None
        self._retry = 0

    def first(self, backend: Backend) -> bool:
        """Whether ``backend`` is its model's first try, which starts at once (no coroutine)."""
        if self._model != backend.model:
            self._model, self._retry = backend.model, 0
            return True
        return False

    async def before(self, backend: Backend, deadline: float) -> bool:
        """Wait before trying ``backend``; False when the wait would pass the deadline."""
        if self.first(backend):
            return True
        self._retry += 1
        delay = self.backoff_s * 2 ** (self._retry - 1)
        if asyncio.get_running_loop().time() + delay >= deadline:
            return False
        await asyncio.sleep(delay)
        return True


class OutgoingBodies:
    """The request body as each model's server wants it: ``model`` set to its served name.

    The client's own bytes go out unchanged when they already name it; a body is encoded once
    per served name, however many replicas and retries use it.
    """

    def __init__(self, request: ClientRequest) -> None:
        self._request = request
        self._bodies: dict[str, bytes] = {}

    def for_backend(self, backend: Backend) -> bytes:
        body = self._bodies.get(backend.served_name)
        if body is None:
            request = self._request
            body = (
                request.body
                if request.model == backend.served_name
                else with_model(request.payload, backend.served_name)
            )
            self._bodies[backend.served_name] = body
        return body


def with_model(payload: dict[str, Any], served_name: str) -> bytes:
    return json.dumps({**payload, "model": served_name}).encode()


@dataclass(slots=True)
class Answer:
    """A backend's answer the client gets: a buffered one (``body`` complete), an error status
    of a stream (its body read whole), or a stream's head and first bytes (``streaming``)."""

    backend: Backend
    live: BackendRuntime
    upstream: UpstreamResponse
    first_piece: bytes
    started: float  # loop time the attempt began: its latency feeds the backend's stats
    streaming: bool


async def send(
    backend: Backend, live: BackendRuntime, request: ClientRequest, body: bytes, deadline: float
) -> Answer:
    """One attempt at one backend; its in-flight count is raised until the answer is settled.

    A stream's answer is its head and first bytes; an error status of a stream is read whole,
    as a buffered answer would be. Raises UpstreamError (the count lowered again) when the
    exchange failed.
    """
    # The pool's loop is the running one; asyncio.get_running_loop() costs a getpid() per call.
    started = live.pool.loop.time()
    live.stats.outstanding += 1
    first_piece = b""
    try:
        upstream = await live.pool.post(request.path, body, deadline, buffered=not request.stream)
        if request.stream:
            first_piece = (
                await upstream.read() if upstream.status == 200 else await upstream.read_all()
            )
            if upstream.status != 200:
                upstream.close()
                upstream.body = first_piece
    except BaseException:  # failed, or cancelled with its client: not in flight any more
        live.stats.outstanding -= 1
        raise
    streaming = request.stream and upstream.status == 200
    return Answer(backend, live, upstream, first_piece, started, streaming)


def failed(backend: Backend, live: BackendRuntime, metrics: RouterMetrics, reason: str) -> None:
    """An attempt that failed: against the backend's breaker and error rate, and counted."""
    live.failed()
    metrics.upstream_failures.labels(backend.model, backend.id, reason).inc()


def settle(answer: Answer) -> None:
    """A complete answer (not a stream being relayed): the backend succeeded."""
    live = answer.live
    live.stats.outstanding -= 1
    live.succeeded(live.pool.loop.time() - answer.started)


def exhausted(failure: UpstreamError | None, deadline: float, primary: str) -> Rejected:
    """Why no backend answered: the deadline, every breaker open, or the last failure."""
    if (failure is not None and failure.reason == "timeout") or (
        asyncio.get_running_loop().time() >= deadline
    ):
        return Rejected(
            error_response(
                504, "The backends did not answer before the request's deadline.", "timeout"
            ),
            primary,
        )
    if failure is None:
        return Rejected(
            error_response(
                503,
                "Every backend for this model is ejected (circuit open); retry later.",
                "circuit_open",
            ),
            primary,
        )
    return Rejected(
        error_response(502, f"The backends failed to answer: {failure}", "upstream_failed"),
        primary,
    )


async def attempt(
    request: ClientRequest,
    routed: Routed,
    backends: Mapping[str, BackendRuntime],
    retries: Retries,
    deadline: float,
    metrics: RouterMetrics,
) -> Answer:
    """Try the backends in order until one answers below 500; raise Rejected when none did.

    A buffered answer comes back settled; a stream's answer is settled by its relay.
    """
    backoff = Backoff(retries.backoff_ms / 1000)
    bodies = OutgoingBodies(request)
    failure: UpstreamError | None = None
    for backend in attempt_order(routed.decision, retries.attempts):
        live = backends[backend.id]
        if not live.breaker.acquire():
            continue
        try:
            go = (
                backoff.first(backend) or await backoff.before(backend, deadline)
            ) and not live.stats.draining
        except BaseException:  # the client went away during the backoff
            live.breaker.release()
            raise
        if not go:
            live.breaker.release()
            if live.stats.draining:
                continue  # drained while this request waited: not one more request goes there
            break
        try:
            answer = await send(backend, live, request, bodies.for_backend(backend), deadline)
        except asyncio.CancelledError:
            live.breaker.release()
            raise
        except UpstreamError as exc:
            failed(backend, live, metrics, exc.reason)
            failure = exc
            if live.pool.loop.time() >= deadline:
                break
            continue
        upstream = answer.upstream
        if upstream.status >= 500:
            live.stats.outstanding -= 1
            failed(backend, live, metrics, "status")
            message = upstream_message(upstream.status, upstream.body)
            failure = UpstreamError("status", f"HTTP {upstream.status}: {message}")
            continue
        if backend.model != routed.primary:
            metrics.fallbacks.labels(backend.model, backend.id).inc()
        if not answer.streaming:
            settle(answer)
        return answer
    raise exhausted(failure, deadline, routed.primary)
