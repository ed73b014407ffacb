"""`hxp loadtest` against real servers on loopback: counts, causes, bounds, clients, timeline."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from hxp_runtime.certs import create_ca, issue
from hxp_runtime.config import HostGroup, SecretRef, load_config, resolve_host
from hxp_runtime.loadtest import (
    NO_BACKEND,
    Client,
    LoadResult,
    LoadSpec,
    Outcome,
    human_report,
    run_load,
    summarise,
    timeline_lines,
)
from hxp_runtime.router.app import Gateway
from hxp_runtime.router.settings import RouterSecrets, RouterSettings
from tests.dataplane import free_port
from tests.stack.load import start_load

REPO = Path(__file__).resolve().parents[2]
KEY = "loadtest-key-0123456789abcdef"
CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "finish_reason": "length",
            "message": {"role": "assistant", "content": "hi"},
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}
SLO = {"latency_ms": 1000, "throughput_rps": 10}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Served:
    """What a test server saw: the request bodies it answered."""

    bodies: list[dict[str, object]] = field(default_factory=list)


@dataclass
class Server:
    url: str
    served: Served
    runner: web.AppRunner


async def start(
    handler: Handler, served: Served, key: str | None, tls: ssl.SSLContext | None = None
) -> Server:
    """A server on loopback; ``key``: the API key every request must carry, if any; ``tls``:
    serve HTTPS with it."""

    async def recorded(request: web.Request) -> web.StreamResponse:
        if key is not None:
            assert request.headers["Authorization"] == f"Bearer {key}"
        served.bodies.append(await request.json())
        return await handler(request)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", recorded)
    app.router.add_post("/v1/embeddings", recorded)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    scheme = "https" if tls else "http"
    return Server(f"{scheme}://127.0.0.1:{runner.addresses[0][1]}", served, runner)


Serve = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[Server] = []

    async def serve(
        handler: Handler, key: str | None = KEY, tls: ssl.SSLContext | None = None
    ) -> Server:
        servers.append(await start(handler, Served(), key, tls))
        return servers[-1]

    yield serve
    for server in servers:
        await server.runner.cleanup()


def spec(url: str, **overrides: object) -> LoadSpec:
    fields: dict[str, object] = {"url": url, "key": KEY, "models": ["m"], "requests": 20}
    fields.update(overrides)
    return LoadSpec(**fields)  # type: ignore[arg-type]


def replicas() -> Handler:
    """Two replicas behind one address, told apart by the header the hxp router sets."""
    answered = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal answered
        if request.path.endswith("embeddings"):
            embedding = {"object": "list", "data": [{"index": 0, "embedding": [0.1]}]}
            return web.json_response(embedding, headers={"x-hxp-backend": "emb-0"})
        answered += 1
        replica = "m-a" if answered % 2 else "m-b"
        return web.json_response(CHAT, headers={"x-hxp-backend": replica})

    return answer


async def test_counts_add_up_and_backends_come_from_the_header(serve: Serve) -> None:
    server = await serve(replicas())
    result = await run_load(
        spec(server.url, models=["m", "e"], embeddings_models=frozenset({"e"}), requests=40)
    )
    report = summarise(result)
    assert report["sent"] == 40 == len(server.served.bodies)
    assert report["ok"] == 40 and report["failed"] == {}
    assert report["by_backend"] == {"m-a": 10, "m-b": 10, "emb-0": 20}
    chats = [b for b in server.served.bodies if "messages" in b]
    embeddings = [b for b in server.served.bodies if "input" in b]
    assert len(chats) == len(embeddings) == 20
    assert {b["model"] for b in embeddings} == {"e"}
    assert all(b["max_tokens"] == 4 and "stream" not in b for b in chats)
    # Every prompt differs, so no response cache can answer two of them.
    prompts = [json.dumps(b.get("messages") or b["input"]) for b in server.served.bodies]
    assert len(set(prompts)) == 40
    assert sum(b["ok"] for b in report["timeline"]) == 40
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert report["client"] == "hxp" and report["retries"] == 0


async def test_by_backend_counts_what_each_replica_behind_a_real_router_served(
    serve: Serve,
) -> None:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response(CHAT)

    # The router sends its own upstream key (none here), not the client's.
    first, second = await serve(chat, key=None), await serve(chat, key=None)
    settings = RouterSettings.model_validate(
        {
            "backends": [
                {"name": "chat", "served_name": "m", "url": server.url, "slo": SLO}
                for server in (first, second)
            ],
            "health_check": {"enabled": False},
        }
    )
    secrets = RouterSecrets.model_validate({"api_keys": [{"name": "load", "secret": KEY}]})
    runner = web.AppRunner(Gateway(settings, secrets).build_app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        router = f"http://127.0.0.1:{runner.addresses[0][1]}"
        report = summarise(
            await run_load(spec(router, models=["chat"], requests=40, concurrency=4))
        )
    finally:
        await runner.cleanup()
    assert report["ok"] == 40
    # The router names a model's second replica chat-2.
    assert report["by_backend"] == {
        name: count
        for name, count in (
            ("chat", len(first.served.bodies)),
            ("chat-2", len(second.served.bodies)),
        )
        if count
    }


async def test_a_server_that_stops_mid_run_gives_connect_failures(serve: Serve) -> None:
    stopping: list[asyncio.Task[None]] = []

    async def stop_at_the_15th(request: web.Request) -> web.Response:
        if len(server.served.bodies) == 15:
            stopping.append(asyncio.create_task(server.runner.cleanup()))
        await asyncio.sleep(0.005)
        return web.json_response(CHAT)

    server = await serve(stop_at_the_15th)
    report = summarise(await run_load(spec(server.url, requests=60, concurrency=4)))
    await stopping[0]
    answered = len(server.served.bodies)
    assert 15 <= answered < 60
    assert report["sent"] == 60
    assert report["ok"] == answered
    assert report["failed"] == {"connect": 60 - answered}
    assert len(report["failures"]) == 20
    assert {f["cause"] for f in report["failures"]} == {"connect"}
    first_failure = report["failures"][0]["t"]
    assert all(f["t"] >= first_failure for f in report["failures"])


async def test_http_errors_are_counted_by_status(serve: Serve) -> None:
    async def one_model_down(request: web.Request) -> web.Response:
        body = await request.json()
        if body["model"] == "down":
            return web.json_response(
                {"error": {"message": "every backend for this model is ejected"}},
                status=503,
                headers={"x-hxp-backend": "down-0"},
            )
        return web.json_response(CHAT, headers={"x-hxp-backend": "up-0"})

    server = await serve(one_model_down)
    report = summarise(await run_load(spec(server.url, models=["up", "down"], requests=30)))
    assert report["sent"] == 30
    assert report["ok"] == 15 and report["by_backend"] == {"up-0": 15}
    assert report["failed"] == {"http_503": 15}
    assert {(f["model"], f["cause"]) for f in report["failures"]} == {("down", "http_503")}
    assert "ejected" in report["failures"][0]["detail"]


@pytest.mark.slow
async def test_a_broken_event_stream_is_a_stream_failure(serve: Serve) -> None:
    async def events(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert body["stream"] is True
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "x"}}]}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if body["model"] == "broken":
            await response.write(b'data: {"error": {"message": "the backend failed"}}\n\n')
        elif body["model"] == "cut":
            pass  # ends without [DONE]
        else:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    server = await serve(events)
    for client in Client:
        report = summarise(
            await run_load(
                spec(server.url, models=["fine", "broken"], requests=10, stream=True, client=client)
            )
        )
        assert report["ok"] == 5, client
        assert report["failed"] == {"stream": 5}, client
    cut = summarise(await run_load(spec(server.url, models=["cut"], requests=3, stream=True)))
    assert cut["failed"] == {"stream": 3}
    assert "without data: [DONE]" in cut["failures"][0]["detail"]


async def drop_first_connection() -> tuple[str, asyncio.Server, list[int]]:
    """A server that closes its first connection as soon as a request arrives on it, then
    answers every later request: what a client sees while a listener restarts."""
    body = json.dumps(CHAT).encode()
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-hxp-backend: m-0\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        first = len(connections) == 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                await reader.readexactly(length)
                if first:
                    return
                writer.write(answer)
                await writer.drain()
        except asyncio.IncompleteReadError:
            return  # the client closed its connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server, connections


@pytest.mark.parametrize(("retries", "ok", "failed"), [(True, 1, {}), (False, 0, {"connect": 1})])
async def test_the_openai_client_retries_a_dropped_connection_unless_told_not_to(
    retries: bool, ok: int, failed: dict[str, int]
) -> None:
    url, server, connections = await drop_first_connection()
    async with server:
        load = spec(url, client=Client.OPENAI, retries=retries, requests=1, concurrency=1)
        report = summarise(await run_load(load))
    assert report["ok"] == ok and report["failed"] == failed
    assert report["client"] == "openai" and report["retries"] == (2 if retries else 0)
    assert len(connections) == (2 if retries else 1)
    if ok:
        assert report["by_backend"] == {"m-0": 1}


@pytest.mark.parametrize("client", list(Client))
async def test_both_clients_verify_an_https_router_against_the_given_ca(
    serve: Serve, client: Client, tmp_path: Path
) -> None:
    ca, stranger = create_ca("hxp loadtest CA"), create_ca("another CA")
    pair = issue(ca, "localhost", [ipaddress.IPv4Address("127.0.0.1")])
    for name, data in (("router.crt", pair.certificate), ("router.key", pair.key)):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "ca.crt").write_bytes(ca.certificate)
    (tmp_path / "stranger.crt").write_bytes(stranger.certificate)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "router.crt", tmp_path / "router.key")
    server = await serve(replicas(), tls=tls)
    assert server.url.startswith("https://")
    trusted = spec(
        server.url, client=client, retries=False, requests=4, ca_file=tmp_path / "ca.crt"
    )
    report = summarise(await run_load(trusted))
    assert report["ok"] == 4 and report["failed"] == {}
    # A certificate from a CA it was not given is refused before any request is sent.
    wrong = spec(
        server.url, client=client, retries=False, requests=2, ca_file=tmp_path / "stranger.crt"
    )
    report = summarise(await run_load(wrong))
    assert report["ok"] == 0 and report["failed"] == {"connect": 2}
    assert any("certificate" in f["detail"].lower() for f in report["failures"]), report
    assert len(server.served.bodies) == 4


async def test_the_hxp_client_never_retries() -> None:
    url, server, connections = await drop_first_connection()
    async with server:
        report = summarise(await run_load(spec(url, requests=1, concurrency=1)))
    assert report["failed"] == {"connect": 1} and len(connections) == 1


async def test_a_run_is_bounded_by_its_duration(serve: Serve) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.json_response(CHAT)

    server = await serve(slow)
    report = summarise(
        await run_load(spec(server.url, requests=None, duration_s=0.5, concurrency=2))
    )
    # Two requests in flight at a time, 50 ms each: about 20 in 0.5 s.
    assert 10 <= report["sent"] <= 22
    assert report["sent"] == report["ok"] == len(server.served.bodies)
    assert 0.5 <= report["duration_s"] < 0.5 + 0.3
    assert [b["t"] for b in report["timeline"]] == [0]


async def test_a_run_is_bounded_by_its_request_count(serve: Serve) -> None:
    async def fast(request: web.Request) -> web.Response:
        return web.json_response(CHAT)

    server = await serve(fast)
    report = summarise(await run_load(spec(server.url, requests=7, duration_s=30, concurrency=3)))
    assert report["sent"] == 7 == len(server.served.bodies)
    assert report["duration_s"] < 5


@pytest.mark.slow
async def test_a_request_that_takes_too_long_times_out(serve: Serve) -> None:
    async def stuck(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response(CHAT)

    server = await serve(stuck)
    for client in Client:
        load = spec(server.url, requests=2, timeout_s=0.2, client=client, retries=False)
        report = summarise(await run_load(load))
        assert report["failed"] == {"timeout": 2}, client


def outcome(t: float, backend: str | None = "a", cause: str | None = None) -> Outcome:
    return Outcome(t=t, model="m", latency_s=0.01 * (t + 1), backend=backend, cause=cause)


def test_the_timeline_has_one_bucket_per_second_by_when_requests_were_sent() -> None:
    outcomes = [
        outcome(0.1),
        outcome(0.9, "b"),
        outcome(1.5, cause="connect"),
        outcome(3.2, None),
    ]
    report = summarise(LoadResult(spec("http://x:1"), outcomes, duration_s=3.4))
    assert report["timeline"] == [
        {"t": 0, "ok": 2, "failed": 0, "by_backend": {"a": 1, "b": 1}},
        {"t": 1, "ok": 0, "failed": 1, "by_backend": {}},
        {"t": 2, "ok": 0, "failed": 0, "by_backend": {}},
        {"t": 3, "ok": 1, "failed": 0, "by_backend": {NO_BACKEND: 1}},
    ]
    assert report["failed"] == {"connect": 1}
    assert report["latency_ms"] == {"p50": 19.0, "p99": 42.0, "max": 42.0}


def test_the_human_timeline_folds_seconds_where_nothing_changed() -> None:
    outcomes = [outcome(t + 0.5, "a") for t in range(4)]
    outcomes += [outcome(4.5, "a", cause="http_503"), outcome(5.5, "a"), outcome(6.5, "a")]
    outcomes += [outcome(6.6, "b"), outcome(7.5, "b")]
    report = summarise(LoadResult(spec("http://x:1"), outcomes, duration_s=8))
    lines = [line.split() for line in timeline_lines(report["timeline"])]
    assert lines == [
        ["0-3s", "ok", "4", "failed", "0", "a", "4"],
        ["4s", "ok", "0", "failed", "1", "-"],
        ["5s", "ok", "1", "failed", "0", "a", "1"],
        ["6s", "ok", "2", "failed", "0", "a", "1,", "b", "1"],
        ["7s", "ok", "1", "failed", "0", "b", "1"],
    ]
    text = human_report(report)
    assert "failed http_503" in text and "p50" in text


def hxp(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "hxp_runtime.cli", "loadtest", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def fast_backend() -> Iterator[str]:
    """benchmarks/fast_backend.py, the router benchmark's backend, in its own process."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, REPO / "benchmarks/fast_backend.py", "--port", str(port)]
    )
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.monotonic() < deadline, "fast_backend did not listen within 10 s"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.slow
def test_the_command_exits_0_when_every_request_succeeded(
    fast_backend: str, key_file: Path
) -> None:
    done = hxp(
        fast_backend, "--key-file", key_file, "--model", "fast", "--requests", "25", "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["sent"] == report["ok"] == 25
    assert report["by_backend"] == {NO_BACKEND: 25}
    human = hxp(fast_backend, "--key-file", key_file, "--model", "fast", "--requests", "5")
    assert human.returncode == 0 and "ok 5, failed 0" in human.stdout
    assert KEY not in done.stdout + done.stderr + human.stdout + human.stderr


@pytest.mark.slow
def test_the_command_exits_1_when_a_request_failed(key_file: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    done = hxp(nobody, "--key-file", key_file, "--model", "m", "--requests", "3", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["failed"] == {"connect": 3}


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["--key-file", "/nonexistent/key", "--model", "m"],
        ["--model", "m"],
        ["--key-file", "KEY", "--model", "m", "--concurrency", "0"],
        ["--key-file", "KEY", "--model", "m", "--client", "curl"],
        ["--key-file", "KEY", "--model", "m", "--ca", "KEY"],  # --ca with an http:// URL
    ],
)
def test_bad_usage_exits_2(args: list[str], key_file: Path) -> None:
    args = [str(key_file) if a == "KEY" else a for a in args]
    done = hxp("http://127.0.0.1:9", *args, "--requests", "1", "--json")
    assert done.returncode == 2
    assert json.loads(done.stdout)["problems"], done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("ca", ["/nonexistent/ca.crt", "KEY"])
def test_a_ca_that_is_not_a_readable_pem_file_exits_2(ca: str, key_file: Path) -> None:
    ca = str(key_file) if ca == "KEY" else ca
    done = hxp("https://127.0.0.1:9", "--key-file", key_file, "--model", "m", "--ca", ca, "--json")
    assert done.returncode == 2
    [problem] = json.loads(done.stdout)["problems"]
    assert problem["field"] == "--ca" and "cannot load the CA certificate" in problem["message"]
    assert KEY not in done.stdout + done.stderr


@pytest.mark.slow
def test_a_key_others_can_read_is_warned_about(key_file: Path) -> None:
    key_file.chmod(0o644)
    nobody = f"http://127.0.0.1:{free_port()}"
    done = hxp(nobody, "--key-file", key_file, "--model", "m", "--requests", "1")
    assert "chmod 600" in done.stderr and KEY not in done.stderr + done.stdout


@pytest.mark.slow
def test_start_load_runs_against_the_configured_router(
    fast_backend: str, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = load_config(REPO / "inventory/lab/hxp.yml")
    port = int(fast_backend.rsplit(":", 1)[1])
    router_host = lab.host(resolve_host(lab, lab.router.host, HostGroup.LLM) or "")
    key = lab.router.api_keys[0].model_copy(
        update={"secret": SecretRef(scheme="file", value=str(key_file))}
    )
    cfg = lab.model_copy(
        update={
            "hosts": [
                h.model_copy(update={"address": "127.0.0.1"}) if h is router_host else h
                for h in lab.hosts
            ],
            # The fast backend serves plain HTTP on loopback.
            "router": lab.router.model_copy(update={"port": port, "api_keys": [key], "tls": None}),
        }
    )
    run = start_load(cfg, models=["hermes", "minilm"], concurrency=2, duration_s=0.5)
    command = run.process.args
    assert isinstance(command, list)
    assert command[command.index("minilm") - 1] == "--embeddings-model"  # task: embed
    assert command[command.index("hermes") - 1] == "--model"
    report = run.wait()
    assert report["sent"] == report["ok"] > 0 and report["failed"] == {}
    assert "load (hxp client, retries 0):" in capsys.readouterr().out
