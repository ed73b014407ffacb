"""A fast OpenAI-compatible backend for the router benchmark: canned answers, no model.

A test double of vLLM, not a model: the benchmark needs a backend whose own cost is small next
to the proxy's (vLLM on CPU spends milliseconds per request; this spends microseconds), so that
the numbers measure the proxy. One process, uvloop (plain asyncio without it), a raw asyncio
protocol with HTTP/1.1 keep-alive::

    python benchmarks/fast_backend.py --port 18001 [--stream-chunks 16 --chunk-interval-ms 2]

POST /v1/chat/completions, /v1/completions and /v1/embeddings answer a fixed JSON body with a
``usage`` block; with ``"stream": true`` in the body the answer is Server-Sent Events sent as
HTTP chunks, the first at once and the others ``--chunk-interval-ms`` apart. GET /health,
/v1/models and /metrics (the three ``vllm:*`` load gauges the router reads) are answered too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import cast

try:
    import uvloop
except ImportError:  # a host with only Debian's python3 (the router role's Molecule scenario)
    uvloop = None  # type: ignore[assignment]

MODEL = "fast"


def _json_response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def completion_body(chat: bool) -> bytes:
    choice: dict[str, object] = {"index": 0, "finish_reason": "length", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": "The quick brown fox jumps."}
    else:
        choice["text"] = "The quick brown fox jumps."
    return json.dumps(
        {
            "id": "cmpl-fast",
            "object": "chat.completion" if chat else "text_completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [choice],
            "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
        },
        separators=(",", ":"),
    ).encode()


EMBEDDING_BODY = json.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1] * 16}],
        "model": MODEL,
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    },
    separators=(",", ":"),
).encode()
MODELS_BODY = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
).encode()
METRICS_BODY = (
    b'vllm:num_requests_running{model_name="fast"} 0.0\n'
    b'vllm:num_requests_waiting{model_name="fast"} 0.0\n'
    b'vllm:kv_cache_usage_perc{model_name="fast"} 0.0\n'
)
RESPONSES = {
    (b"POST", b"/v1/chat/completions"): _json_response("200 OK", completion_body(chat=True)),
    (b"POST", b"/v1/completions"): _json_response("200 OK", completion_body(chat=False)),
    (b"POST", b"/v1/embeddings"): _json_response("200 OK", EMBEDDING_BODY),
    (b"GET", b"/health"): _json_response("200 OK", b""),
    (b"GET", b"/v1/models"): _json_response("200 OK", MODELS_BODY),
    (b"GET", b"/metrics"): _json_response("200 OK", METRICS_BODY, b"text/plain"),
}
NOT_FOUND = _json_response("404 Not Found", b'{"error":"not found"}')
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def stream_events(count: int) -> list[bytes]:
    events = []
    for i in range(count):
        delta = {"content": f" tok{i}"} if i else {"role": "assistant", "content": ""}
        event = {
            "id": "chatcmpl-fast",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        events.append(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


class Backend(asyncio.Protocol):
    def __init__(self, events: list[bytes], interval_s: float) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.events = [_chunk(e) for e in events]
        self.interval_s = interval_s

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                eol = lower.find(b"\r\n", at)
                length = int(lower[at + 15 : eol if eol >= 0 else len(lower)])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            method, path = head.split(b" ", 2)[:2]
            self.respond(method, path, body)

    def respond(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        if method == b"POST" and (b'"stream":true' in body or b'"stream": true' in body):
            asyncio.get_running_loop().create_task(self.stream())
            return
        self.transport.write(RESPONSES.get((method, path), NOT_FOUND))

    async def stream(self) -> None:
        assert self.transport is not None
        self.transport.write(STREAM_HEAD + self.events[0])
        for chunk in self.events[1:]:
            if self.interval_s:
                await asyncio.sleep(self.interval_s)
            if self.transport.is_closing():
                return
            self.transport.write(chunk)
        self.transport.write(b"0\r\n\r\n")


async def serve(host: str, port: int, chunks: int, interval_s: float) -> None:
    loop = asyncio.get_running_loop()
    events = stream_events(chunks)
    server = await loop.create_server(lambda: Backend(events, interval_s), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stream-chunks", type=int, default=16)
    parser.add_argument("--chunk-interval-ms", type=float, default=2.0)
    args = parser.parse_args()
    server = serve(args.host, args.port, args.stream_chunks, args.chunk_interval_ms / 1000)
    if uvloop is not None:
        uvloop.run(server)
    else:
        asyncio.run(server)


if __name__ == "__main__":
    main()
