"""`hxp loadtest`: bounded openai-style load through the router, for day-2 operations checks.

A run keeps ``concurrency`` requests in flight until it has sent ``requests`` of them or
``duration_s`` has passed, whichever comes first; requests in flight then finish (or time out)
and are counted. Requests go to the models round robin: chat completions with a short prompt
that differs per request (so the router's response cache does not answer them), embeddings for
the models named as embeddings models.

Two clients, because the question "did a restart fail requests?" depends on the client:

- ``hxp``: one aiohttp session, no retries at all; every refused or reset connection counts.
- ``openai``: ``openai.AsyncOpenAI`` at its defaults (``max_retries=2``), as an application
  would use it, or with ``max_retries=0`` (``retries=False``).

An ``https://`` router is verified: against ``ca_file`` when given (the lab's CA, a private
CA), else against the system's trust store. Neither client ever skips verification.

Every request leaves a :class:`Outcome` (seconds since the start when it was sent, model, the
backend from the router's ``x-hxp-backend`` header, cause of failure, latency);
:func:`summarise` turns them into the report that ``--json`` prints.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp
    import openai

BACKEND_HEADER = "x-hxp-backend"
# An answer without the header (a server that is not the hxp router) is counted under this.
NO_BACKEND = "(none)"
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_TOKENS = 4
DEFAULT_TIMEOUT_S = 60.0
# A run given neither --requests nor --duration still ends.
DEFAULT_DURATION_S = 10.0
# The openai SDK's own default (openai.DEFAULT_MAX_RETRIES), without importing it here.
OPENAI_DEFAULT_RETRIES = 2
MAX_FAILURES_LISTED = 20
MAX_DETAIL = 200
TOPICS = (
    "the colour of the sky",
    "prime numbers",
    "a short poem about rain",
    "sorting a list in Python",
    "the capital of France",
    "why the sea is salty",
    "a haiku about autumn",
    "how a bicycle stays upright",
)


class Client(StrEnum):
    HXP = "hxp"
    OPENAI = "openai"


class Cause(StrEnum):
    """Why a request failed; an HTTP status becomes ``http_<status>``."""

    CONNECT = "connect"  # refused, reset or closed before a response
    TIMEOUT = "timeout"
    STREAM = "stream"  # the response began but its event stream broke or carried an error
    OTHER = "other"


def http_cause(status: int) -> str:
    return f"http_{status}"


@dataclass(frozen=True)
class LoadSpec:
    """What one run sends, and when it stops."""

    url: str  # the router's base, http://host:port
    key: str
    models: Sequence[str]
    embeddings_models: frozenset[str] = frozenset()
    concurrency: int = DEFAULT_CONCURRENCY
    requests: int | None = None
    duration_s: float | None = None
    client: Client = Client.HXP
    retries: bool = True
    stream: bool = False
    max_tokens: int = DEFAULT_MAX_TOKENS
    timeout_s: float = DEFAULT_TIMEOUT_S
    ca_file: Path | None = None  # the CA an https:// router's certificate is verified against

    def tls_context(self) -> ssl.SSLContext:
        """What both clients verify an https:// router with; raises OSError or ssl.SSLError
        when ``ca_file`` cannot be read as PEM certificates."""
        return ssl.create_default_context(cafile=self.ca_file)

    @property
    def max_retries(self) -> int:
        """How often the client retries one request itself (the hxp client never does)."""
        return OPENAI_DEFAULT_RETRIES if self.client is Client.OPENAI and self.retries else 0


@dataclass(frozen=True)
class Outcome:
    """One request: ``cause`` is None when it succeeded."""

    t: float  # seconds since the run started, when it was sent
    model: str
    latency_s: float
    backend: str | None = None
    cause: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.cause is None


@dataclass
class Failed(Exception):
    """A request that failed, with the backend that answered if one did."""

    cause: str
    detail: str
    backend: str | None = None


@dataclass
class Answered:
    backend: str | None


def prompt(index: int) -> str:
    """A short prompt of its own for each request: no two hit the same cache entry."""
    return f"Request {index}: say one thing about {TOPICS[index % len(TOPICS)]}."


def short(text: object) -> str:
    """A failure's detail, one line and bounded, for the report."""
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 3] + "..."


def request_body(spec: LoadSpec, model: str, index: int) -> tuple[str, dict[str, Any]]:
    """The path under /v1 and the JSON body of request number ``index``."""
    if model in spec.embeddings_models:
        return "embeddings", {"model": model, "input": prompt(index)}
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt(index)}],
        "max_tokens": spec.max_tokens,
    }
    if spec.stream:
        body["stream"] = True
    return "chat/completions", body


Send = Callable[[str, int], Awaitable[Answered]]


class HxpSender:
    """The plain client: aiohttp, one session, never a retry."""

    def __init__(self, spec: LoadSpec) -> None:
        import aiohttp  # noqa: PLC0415 - `hxp` starts without it; only a load run needs it

        self.spec = spec
        self.aiohttp = aiohttp
        self.session = aiohttp.ClientSession(
            base_url=spec.url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {spec.key}"},
            connector=aiohttp.TCPConnector(limit=spec.concurrency, ssl=spec.tls_context()),
            timeout=aiohttp.ClientTimeout(total=spec.timeout_s),
        )

    async def close(self) -> None:
        await self.session.close()

    async def __call__(self, model: str, index: int) -> Answered:
        aiohttp = self.aiohttp
        path, body = request_body(self.spec, model, index)
        try:
            async with self.session.post(f"v1/{path}", json=body) as response:
                backend = response.headers.get(BACKEND_HEADER)
                if response.status != 200:
                    text = await response.text(errors="replace")
                    raise Failed(http_cause(response.status), short(text), backend)
                try:
                    if body.get("stream"):
                        await read_event_stream(response.content)
                    else:
                        json.loads(await response.read())
                except Failed as failed:
                    failed.backend = backend
                    raise
                except TimeoutError:
                    raise
                except (aiohttp.ClientError, ValueError) as exc:
                    cause = Cause.STREAM if body.get("stream") else Cause.OTHER
                    raise Failed(cause, short(f"{type(exc).__name__}: {exc}"), backend) from exc
                return Answered(backend)
        except TimeoutError as exc:
            raise Failed(
                Cause.TIMEOUT, f"no complete answer within {self.spec.timeout_s} s"
            ) from exc
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:
            # Refused, reset or closed before the response's head came.
            raise Failed(Cause.CONNECT, short(f"{type(exc).__name__}: {exc}")) from exc


async def read_event_stream(content: aiohttp.StreamReader) -> None:
    """Read Server-Sent Events to ``data: [DONE]``; an error event or an early end is a
    broken stream."""
    async for raw in content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        event = json.loads(data)
        if isinstance(event, dict) and "error" in event:
            raise Failed(Cause.STREAM, short(json.dumps(event["error"])))
    raise Failed(Cause.STREAM, "the event stream ended without data: [DONE]")


class OpenAISender:
    """An application's client: ``openai.AsyncOpenAI`` with its own retries (or none)."""

    def __init__(self, spec: LoadSpec) -> None:
        import openai  # noqa: PLC0415 - only this client needs the SDK

        self.spec = spec
        self.openai = openai
        self.client = openai.AsyncOpenAI(
            base_url=spec.url.rstrip("/") + "/v1",
            api_key=spec.key,
            max_retries=spec.max_retries,
            timeout=spec.timeout_s,
            # The SDK's own client and limits, verifying as the hxp client does.
            http_client=openai.DefaultAsyncHttpxClient(verify=spec.tls_context()),
        )

    async def close(self) -> None:
        await self.client.close()

    async def __call__(self, model: str, index: int) -> Answered:
        openai = self.openai
        path, body = request_body(self.spec, model, index)
        try:
            if path == "embeddings":
                raw: Any = await self.client.embeddings.with_raw_response.create(**body)
            else:
                raw = await self.client.chat.completions.with_raw_response.create(**body)
            backend = raw.headers.get(BACKEND_HEADER)
            answer = raw.parse()
        except openai.APITimeoutError as exc:
            raise Failed(Cause.TIMEOUT, f"no answer within {self.spec.timeout_s} s") from exc
        except openai.APIConnectionError as exc:
            raise Failed(Cause.CONNECT, short(connection_detail(exc))) from exc
        except openai.APIStatusError as exc:
            backend = exc.response.headers.get(BACKEND_HEADER)
            raise Failed(http_cause(exc.status_code), short(exc.message), backend) from exc
        if body.get("stream"):
            try:
                async for _ in answer:
                    pass
            except Exception as exc:  # whatever broke the stream is its cause
                raise Failed(Cause.STREAM, short(f"{type(exc).__name__}: {exc}"), backend) from exc
        return Answered(backend)


def connection_detail(exc: openai.APIConnectionError) -> str:
    """The SDK says "Connection error."; the transport's own error says which."""
    cause = exc.__cause__
    return f"{exc.message} ({type(cause).__name__}: {cause})" if cause else exc.message


async def send_one(send: Send, model: str, index: int, started: float) -> Outcome:
    sent = time.monotonic()
    t = sent - started
    try:
        answered = await send(model, index)
    except Failed as failed:
        return Outcome(
            t, model, time.monotonic() - sent, failed.backend, str(failed.cause), failed.detail
        )
    except Exception as exc:  # a load run counts every failure, it never stops
        return Outcome(
            t,
            model,
            time.monotonic() - sent,
            None,
            str(Cause.OTHER),
            short(f"{type(exc).__name__}: {exc}"),
        )
    return Outcome(t, model, time.monotonic() - sent, answered.backend)


@dataclass
class LoadResult:
    spec: LoadSpec
    outcomes: list[Outcome] = field(default_factory=list)
    duration_s: float = 0.0


async def run_load(spec: LoadSpec) -> LoadResult:
    """Send the load ``spec`` describes and wait for every request of it to end."""
    sender: HxpSender | OpenAISender = (
        OpenAISender(spec) if spec.client is Client.OPENAI else HxpSender(spec)
    )
    result = LoadResult(spec)
    numbers = itertools.count()
    started = time.monotonic()
    deadline = None if spec.duration_s is None else started + spec.duration_s

    def next_index() -> int | None:
        if deadline is not None and time.monotonic() >= deadline:
            return None
        index = next(numbers)
        return None if spec.requests is not None and index >= spec.requests else index

    async def worker() -> None:
        while (index := next_index()) is not None:
            model = spec.models[index % len(spec.models)]
            result.outcomes.append(await send_one(sender, model, index, started))

    try:
        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    finally:
        await sender.close()
    result.duration_s = time.monotonic() - started
    result.outcomes.sort(key=lambda o: o.t)
    return result


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile: the smallest value with ``share`` of them at or below."""
    rank = max(1, -(-len(sorted_values) * share // 1))
    return sorted_values[int(rank) - 1]


def milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 1)


@dataclass
class Bucket:
    """One second of the timeline."""

    t: int
    ok: int = 0
    failed: int = 0
    by_backend: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Outcome) -> None:
        if outcome.ok:
            self.ok += 1
            self.by_backend[outcome.backend or NO_BACKEND] += 1
        else:
            self.failed += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "ok": self.ok,
            "failed": self.failed,
            "by_backend": dict(sorted(self.by_backend.items())),
        }


def summarise(result: LoadResult) -> dict[str, Any]:
    """The report of a run: the object `hxp loadtest --json` prints.

    Latencies are of the requests that succeeded (a refused connection takes no time and
    would hide how long the answers took); ``by_backend`` counts those by the backend that
    served them. ``timeline`` has one entry per second of the run, by when requests were sent.
    """
    outcomes = result.outcomes
    ok = [o for o in outcomes if o.ok]
    latencies = sorted(o.latency_s for o in ok)
    failed = Counter(o.cause for o in outcomes if o.cause is not None)
    seconds = int(max(o.t for o in outcomes)) + 1 if outcomes else 0
    buckets = [Bucket(t) for t in range(seconds)]
    for o in outcomes:
        buckets[int(o.t)].add(o)
    return {
        "sent": len(outcomes),
        "ok": len(ok),
        "failed": dict(sorted(failed.items())),
        "latency_ms": {
            "p50": milliseconds(percentile(latencies, 0.5)) if latencies else None,
            "p99": milliseconds(percentile(latencies, 0.99)) if latencies else None,
            "max": milliseconds(latencies[-1]) if latencies else None,
        },
        "by_backend": dict(sorted(Counter(o.backend or NO_BACKEND for o in ok).items())),
        "timeline": [b.as_json() for b in buckets],
        "failures": [
            {"t": round(o.t, 3), "model": o.model, "cause": o.cause, "detail": o.detail}
            for o in outcomes
            if not o.ok
        ][:MAX_FAILURES_LISTED],
        "duration_s": round(result.duration_s, 3),
        "client": result.spec.client.value,
        "retries": result.spec.max_retries,
    }


def timeline_lines(timeline: Sequence[dict[str, Any]]) -> list[str]:
    """The per-second timeline in a few lines: seconds in a row where the same backends served
    and failures stayed absent (or present) are one line, with their counts added up."""
    lines: list[str] = []
    runs: list[tuple[tuple[bool, tuple[str, ...]], list[dict[str, Any]]]] = []
    for bucket in timeline:
        shape = (bucket["failed"] > 0, tuple(bucket["by_backend"]))
        if runs and runs[-1][0] == shape:
            runs[-1][1].append(bucket)
        else:
            runs.append((shape, [bucket]))
    for (_, backends), buckets in runs:
        first, last = buckets[0]["t"], buckets[-1]["t"]
        span = f"{first}s" if first == last else f"{first}-{last}s"
        served = Counter[str]()
        for b in buckets:
            served.update(b["by_backend"])
        ok = sum(b["ok"] for b in buckets)
        failed = sum(b["failed"] for b in buckets)
        where = ", ".join(f"{name} {served[name]}" for name in backends) or "-"
        lines.append(f"  {span:>9}  ok {ok:>6}  failed {failed:>6}  {where}")
    return lines


def human_report(report: dict[str, Any]) -> str:
    """The report for people: counts, latency, backends, the compressed timeline, failures."""
    latency = report["latency_ms"]
    lines = [
        f"{report['sent']} requests in {report['duration_s']:.1f} s "
        f"(client {report['client']}, retries {report['retries']}): "
        f"ok {report['ok']}, failed {sum(report['failed'].values())}",
    ]
    lines += [f"  failed {cause:<10} {count:>6}" for cause, count in report["failed"].items()]
    if latency["p50"] is not None:
        lines.append(
            f"latency ms (ok): p50 {latency['p50']}  p99 {latency['p99']}  max {latency['max']}"
        )
    if report["by_backend"]:
        lines.append("served by:")
        lines += [f"  {name:<24} {count:>6}" for name, count in report["by_backend"].items()]
    if report["timeline"]:
        lines.append("timeline (by second sent):")
        lines += timeline_lines(report["timeline"])
    if report["failures"]:
        lines.append(f"first failures (up to {MAX_FAILURES_LISTED}):")
        lines += [
            f"  {f['t']:>8.3f}s  {f['model']}  {f['cause']}  {f['detail']}"
            for f in report["failures"]
        ]
    return "\n".join(lines)
