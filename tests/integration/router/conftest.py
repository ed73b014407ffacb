"""The router as a real process (``python -m hxp_runtime.router``) in front of real servers.

``RouterProcess`` writes a settings and a secrets file, starts the daemon, waits for /ready,
and stops it with a signal. ``dataplane`` gives one throwaway PostgreSQL and Redis for the
module. ``Tap`` is a TCP relay that records the bytes a backend sends, so that a test can
compare them with what the router passed on, and that can hold an event stream back after its
head and first chunk, so that a test can see the router pass on a piece before the backend has
sent the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.dataplane import (
    Postgres,
    Redis,
    ServiceMissing,
    free_port,
    postgres_server,
    redis_server,
)

REPO = Path(__file__).resolve().parents[3]
READY_TIMEOUT_S = 60.0


def call(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request; returns (status, headers, body) for errors as well. ``context``: how an
    https:// URL's certificate is verified."""
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {key}"} if key else {}),
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@dataclass
class RouterProcess:
    settings: dict[str, Any]
    secrets: dict[str, Any]
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # Settings with tls: the CA that verifies the router's certificate.
    ca_file: Path | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.get("tls") else "http"
        return f"{scheme}://127.0.0.1:{self.settings['port']}"

    @property
    def client_context(self) -> ssl.SSLContext | None:
        return None if self.ca_file is None else ssl.create_default_context(cafile=self.ca_file)

    @property
    def settings_path(self) -> Path:
        return self.directory / "settings.yml"

    @property
    def log_path(self) -> Path:
        return self.directory / "router.log"

    def write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.settings_path.write_text(yaml.safe_dump(self.settings, sort_keys=False))
        secrets = self.directory / "secrets.yml"
        secrets.write_text(yaml.safe_dump(self.secrets, sort_keys=False))
        secrets.chmod(0o600)

    def start(self) -> None:
        self.write()
        self.process = self.spawn()
        self.wait_ready()

    def spawn(self) -> subprocess.Popen[bytes]:
        """The daemon started on the files as written, not waited for."""
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "hxp_runtime.router"),
                    *("--settings", str(self.settings_path)),
                    *("--secrets", str(self.directory / "secrets.yml")),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    def wait_ready(self, what: str = "ready") -> dict[str, Any]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the router exited:\n{self.log_tail()}")
            try:
                status, _, body = call(
                    "GET", self.url + "/ready", timeout=2, context=self.client_context
                )
            except OSError:
                status, body = 0, b"{}"
            state = json.loads(body or b"{}")
            if status == 200 and state.get(what, False):
                return state  # type: ignore[no-any-return]
            time.sleep(0.2)
        raise RuntimeError(f"the router did not become {what}:\n{self.log_tail()}")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 60.0, *, signalled: bool = False) -> int:
        """SIGTERM (unless ``signalled`` already) and wait; returns the exit status."""
        if self.process is None:
            return 0
        if not signalled and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def worker_pids(router: RouterProcess) -> set[int]:
    """The supervisor's children: its workers."""
    assert router.process is not None
    parent = str(router.process.pid)
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if stat.read_text().rsplit(")", 1)[1].split()[1] == parent:
                pids.add(int(stat.parent.name))
    return pids


@pytest.fixture(scope="module")
def backend_port() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "fast_backend.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if call("GET", f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200:
                    break
            time.sleep(0.1)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def fast_backend(port: int) -> dict[str, Any]:
    """The router's backend entry for benchmarks/fast_backend.py on ``port`` (backend_port)."""
    return {
        "name": "fast",
        "served_name": "fast",
        "url": f"http://127.0.0.1:{port}",
        "slo": {"latency_ms": 2000, "throughput_rps": 10},
    }


def hxp_keys(dataplane: Dataplane, *args: str) -> subprocess.CompletedProcess[str]:
    """`hxp keys ARGS` against the data plane's PostgreSQL."""
    return subprocess.run(
        [sys.executable, "-m", "hxp_runtime.cli", "keys", *args, "--dsn", dataplane.postgres.dsn],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )


def new_key(dataplane: Dataplane, name: str, *limits: str) -> str:
    """A new API key NAME in PostgreSQL (``limits``: `hxp keys create` options); the key."""
    done = hxp_keys(dataplane, "create", name, *limits, "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["result"]["key"])


@dataclass(frozen=True)
class Dataplane:
    postgres: Postgres
    redis: Redis


@pytest.fixture(scope="module")
def dataplane() -> Iterator[Dataplane]:
    try:
        with postgres_server() as pg, redis_server() as redis:
            yield Dataplane(pg, redis)
    except ServiceMissing as missing:
        pytest.skip(str(missing))


class Tap:
    """A TCP relay to ``target_port`` that records, per connection, what the target sent."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.recorded: list[bytearray] = []
        self.holding = threading.Event()  # a stream's first chunk is out, the rest held
        self._hold_next = False
        self._release: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", self.port)
        )
        self._started.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = bytearray()
        self.recorded.append(record)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, tape: bytearray | None
        ) -> None:
            try:
                while data := await source.read(65536):
                    cut = None
                    if tape is not None:
                        tape.extend(data)
                        cut = self._hold_point(tape, len(tape) - len(data))
                    if cut is None:
                        sink.write(data)
                    else:  # the head and first chunk now, the rest once released
                        sink.write(data[:cut])
                        await sink.drain()
                        await self._hold()
                        sink.write(data[cut:])
                    await sink.drain()
            except ConnectionError:
                pass
            sink.close()

        await asyncio.gather(pump(reader, up_writer, None), pump(up_reader, writer, record))

    def hold_next_stream(self) -> None:
        """Pass on the next event stream's head and first chunk, then hold the rest until
        `release` (``holding`` is set meanwhile), however much of it has come already."""
        self.holding.clear()
        self._hold_next = True

    def release(self) -> None:
        self._hold_next = False
        if self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def _hold_point(self, record: bytearray, offset: int) -> int | None:
        """Where, in the bytes read last (from ``offset`` of ``record``, one connection's bytes
        so far), the tap is to hold the stream: after its head and first chunk, once both have
        come, if it is an event stream and the tap is to hold the next one; else None."""
        if not self._hold_next:
            return None
        start = record.rfind(b"HTTP/1.1 ")
        head_end = record.find(b"\r\n\r\n", start)
        if start < 0 or head_end < 0 or b"text/event-stream" not in record[start:head_end]:
            return None
        size_end = record.find(b"\r\n", head_end + 4)
        if size_end < 0:
            return None
        size = int(bytes(record[head_end + 4 : size_end]).split(b";")[0], 16)
        cut = size_end + 2 + size + 2
        return cut - offset if len(record) >= cut else None

    async def _hold(self) -> None:
        self._hold_next = False
        self._release = asyncio.Event()
        self.holding.set()
        await self._release.wait()

    def close(self) -> None:
        """Close every relayed connection, then stop."""
        self.release()

        async def close_connections() -> None:
            relays = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for relay in relays:
                relay.cancel()
            await asyncio.gather(*relays, return_exceptions=True)
            for writer in self._writers:
                writer.close()
            await asyncio.gather(*(w.wait_closed() for w in self._writers), return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close_connections(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def metric_sum(text: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` (``hxp_router_requests_total``, a histogram's
    ``..._count``) in the exposition ``text`` whose labels include ``labels``."""
    return sum(
        found.value
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == sample and labels.items() <= found.labels.items()
    )


def dechunk(wire: bytes) -> bytes:
    """The body of an HTTP/1.1 chunked message (``wire`` starts after the head)."""
    body, rest = bytearray(), wire
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        body.extend(rest[:size])
        rest = rest[size + 2 :]


# The lab's eight categories, one example each, and labelled prompts for them (64, 8 each).
LAB_CATEGORIES = {
    "reasoning": "Prove that 17 is prime.",
    "analysis": "Summarise this report.",
    "general": "What is the capital of France?",
    "creative": "Write a poem about rain.",
    "chat": "Hello, how are you?",
    "code": "Write a Python function to sort a list.",
    "quick": "Is 9 even?",
    "classification": "Label the sentiment: great film.",
}
PROMPTS = REPO / "tests" / "data" / "semantic_prompts.json"


@pytest.fixture(scope="session")
def static_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the static table of every test in the session: built once there.

    test_router_static's daemon builds it (four workers, one build); the tests after it read it.
    """
    return tmp_path_factory.mktemp("static-table")


@pytest.fixture(scope="session")
def static_vocabulary(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedding model's vocab.txt with every piece that the tests' texts (PROMPTS, the
    categories' examples) never use made an ``[unused…]`` slot, which a table skips.

    Every id keeps its line, and WordPiece splits those texts exactly as with the whole
    vocabulary (each piece it picks is kept, and none longer is added), so their rows and
    decisions are the whole table's. The table is then a few hundred rows to build, not 30,000:
    the lab's router builds the whole one (tests/stack), and the semantic benchmark measures it.
    """
    from hxp_runtime.router.static_embedding import SPECIAL, WordPiece, read_vocabulary
    from tests.vllm_servers import EMBEDDINGS_MODEL

    source = tiny_models / EMBEDDINGS_MODEL / "vocab.txt"
    vocabulary, _ = read_vocabulary(source)
    tokenizer = WordPiece(vocabulary)
    labelled = json.loads(PROMPTS.read_text())
    texts = [*LAB_CATEGORIES.values(), *(t for ts in labelled.values() for t in ts), "poem"]
    used = {i for text in texts for i in tokenizer.ids(text)}
    used |= {vocabulary[token] for token in SPECIAL if token in vocabulary}
    lines = source.read_bytes().decode("utf-8").split("\n")  # as read_vocabulary numbers them
    if lines[-1] == "":
        lines.pop()
    pieces = [line if n in used else f"[unused-test-{n}]" for n, line in enumerate(lines)]
    reduced = tmp_path_factory.mktemp("vocabulary") / "vocab.txt"
    reduced.write_text("\n".join(pieces) + "\n", encoding="utf-8")
    return reduced
