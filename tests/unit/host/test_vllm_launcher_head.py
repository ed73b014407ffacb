"""The launchers of a split model's stages stop theirs when another goes, so that systemd starts
it again and the pipeline forms anew: a headless stage whose head went, a head whose stage went.

The other side is a double here: a listening socket (the head's master port) or a connection
from 127.0.0.2 (a stage on another host), in this test's process; the real pair, vLLM's, is in
tests/pipeline, on two lab hosts. The watched side is a real child process of a real launcher,
holding or accepting connections as vLLM's stage and head do with the head's TCP store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from hxp_runtime.host.vllm_launcher import (
    REJOIN_EXIT,
    Connection,
    HeadWatch,
    StageWatch,
    established,
    pipeline_watch,
    proc_address,
    tree_connections,
)
from tests.dataplane import free_port

ROOT = Path(__file__).resolve().parents[3]

# The stage's stand-in: connects twice to the head (as vLLM's worker and engine do), says so,
# then waits; on SIGTERM it says that too and exits 0, as vLLM does.
STAGE = textwrap.dedent(
    """\
    import signal, socket, sys, time
    def stop(signum, frame):
        print("stage: SIGTERM", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    port = int(sys.argv[1])
    while True:
        try:
            held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
            break
        except ConnectionRefusedError:
            time.sleep(0.1)
    print("stage: joined", flush=True)
    time.sleep(60)
    """
)

# The head's stand-in: its master port (argv 1) accepts the stages' connections and holds them;
# its /health (the last argument, as vLLM's --port) answers 200 once one has joined, as
# vLLM's head does once ready.
HEAD = textwrap.dedent(
    """\
    import http.server, signal, socket, sys, threading
    def stop(signum, frame):
        print("head: SIGTERM", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    master = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    joined = []
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/health":
                self.send_response(404)
            else:
                self.send_response(200 if joined else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *args):
            pass
    health = http.server.HTTPServer(("127.0.0.1", int(sys.argv[-1])), Health)
    threading.Thread(target=health.serve_forever, daemon=True).start()
    print("head: up", flush=True)
    while True:
        joined.append(master.accept()[0])
    """
)

LAUNCHER = textwrap.dedent(
    """\
    import sys
    from hxp_runtime.host.vllm_launcher import Supervisor, health_url, pipeline_watch
    command = sys.argv[1:]
    watch = pipeline_watch(command, health_url(command))
    sys.exit(Supervisor(command, None, interval_s=0.2, watch=watch).run())
    """
)

OTHER_HOST = "127.0.0.2"  # a stage on another host, as the head sees it: loopback, not its address


def test_proc_addresses_read_as_the_kernel_writes_them() -> None:
    # 10.79.0.10:29501 and [::ffff:10.79.0.10]:29501 as /proc/net/tcp{,6} show them (x86).
    assert proc_address("0A004F0A:733D") == ("10.79.0.10", 29501)
    assert proc_address("0000000000000000FFFF00000A004F0A:733D") == ("10.79.0.10", 29501)
    assert proc_address("00000000000000000000000001000000:0050") == ("::1", 80)


def test_only_established_connections_count() -> None:
    table = [
        "  sl  local_address rem_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout ino",
        "   0: 0B004F0A:A1B2 0A004F0A:733D 01 00000000:00000000 00:00000000 00000000 998 0 4711 1",
        "   1: 0B004F0A:A1B3 0A004F0A:733D 08 00000000:00000000 00:00000000 00000000 998 0 4712 1",
        "   2: 00000000:733D 00000000:0000 0A 00000000:00000000 00:00000000 00000000 998 0 4713 1",
    ]
    assert list(established(table)) == [Connection(4711, "10.79.0.11", 41394, "10.79.0.10", 29501)]


def test_the_watch_comes_from_the_multi_node_flags() -> None:
    split = ["serve", "/m", "--nnodes", "2", "--master-addr", "10.79.0.10"]
    stage = pipeline_watch([*split, "--node-rank", "1", "--master-port=29613", "--headless"], None)
    assert isinstance(stage, HeadWatch)
    assert (stage.addresses, stage.port) == (frozenset({"10.79.0.10"}), 29613)
    head = pipeline_watch([*split, "--node-rank", "0"], "http://10.79.0.10:11400/health")
    assert isinstance(head, StageWatch)
    assert (head.port, head.health) == (29501, "http://10.79.0.10:11400/health")
    assert pipeline_watch(["serve", "/m", "--port", "11400"], "http://h:11400/health") is None


def to_head(count: int, port: int = 29501) -> list[Connection]:
    return [Connection(100 + i, "10.79.0.11", 40000 + i, "10.79.0.10", port) for i in range(count)]


def test_a_head_counts_as_gone_only_after_the_stage_joined_it() -> None:
    watch = HeadWatch(frozenset({"10.79.0.10"}), 29501, gone_after=2)
    # Waiting for a head that is not up yet is vLLM's to time out, not the launcher's.
    assert [watch.lost(to_head(0)) for _ in range(5)] == [None] * 5
    assert watch.lost(to_head(3)) is None
    # Connections elsewhere are not the head's.
    assert watch.lost(to_head(2, port=29502)) is None
    gone = watch.lost(to_head(0))
    assert gone == "the head at 10.79.0.10:29501 has gone (no connection to its master port left)"
    # One look without a connection is not enough; a connection again starts the count over.
    watch = HeadWatch(frozenset({"10.79.0.10"}), 29501, gone_after=2)
    assert [watch.lost(to_head(n)) is None for n in (1, 0, 1, 0)] == [True] * 4


def test_a_head_notes_its_stages_once_ready_and_misses_any_that_closes() -> None:
    ready = False
    watch = StageWatch(29501, "http://10.79.0.10:11400/health")
    stage = Connection(7, "10.79.0.10", 29501, "10.79.0.11", 40000)
    local = Connection(8, "10.79.0.10", 29501, "10.79.0.10", 40001)  # the head's own worker
    elsewhere = Connection(9, "10.79.0.10", 41000, "10.79.0.12", 29501)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("hxp_runtime.host.vllm_launcher.answers", lambda url: ready)
        # Starting: connections come and go, and none is noted.
        assert watch.lost([stage, local]) is None
        assert watch.lost([]) is None and watch.joined is None
        ready = True
        assert watch.lost([stage, local, elsewhere]) is None
        assert watch.joined == {7: "10.79.0.11"}
        assert watch.lost([stage]) is None  # only the other hosts' connections are watched
        # The stage restarted and joined again: a new connection, and the old one is gone.
        rejoined = stage._replace(inode=10, remote_port=40002)
        gone = watch.lost([rejoined, local])
    assert gone == "the stage at 10.79.0.11 has gone (its connection to port 29501 closed)"


@pytest.fixture
def head() -> Iterator[socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


def accept(listener: socket.socket, count: int) -> list[socket.socket]:
    listener.settimeout(20)
    return [listener.accept()[0] for _ in range(count)]


def test_connections_are_those_of_the_process_tree(head: socket.socket) -> None:
    port = head.getsockname()[1]
    # The stage's stand-in under a shell: its connections are a grandchild's, as vLLM's workers'.
    stage = subprocess.Popen(
        ["/bin/sh", "-c", f"\"{sys.executable}\" -c '{STAGE}' {port}; true"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        accepted = accept(head, 2)
        assert stage.stdout is not None and stage.stdout.readline().strip() == "stage: joined"
        held = tree_connections(stage.pid)
        assert sorted(c.remote_port for c in held) == [port, port]
        assert {c.local_port for c in held} == {a.getpeername()[1] for a in accepted}
        with socket.create_connection(("127.0.0.1", port)):  # this process's own: not counted
            accepted += accept(head, 1)
            assert len(tree_connections(stage.pid)) == 2
        for connection in accepted:
            connection.close()
        deadline = time.monotonic() + 10
        while tree_connections(stage.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree_connections(stage.pid) == []  # closed by the head: not established any more
    finally:
        os.killpg(stage.pid, signal.SIGKILL)
        stage.communicate()


class Stream:
    """The lines a process writes to one of its pipes, read as they come by a thread of their own,
    so that a test can wait for one with a deadline, and never blocks on a pipe left open."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self.ended = False
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.reader.start()

    def _read(self, pipe: IO[str]) -> None:
        with pipe:
            for line in pipe:
                with self.changed:
                    self.lines.append(line.rstrip("\n"))
                    self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def _holds(self, text: str, whole: bool) -> bool:
        return any(line == text if whole else text in line for line in self.lines)

    def wait_for(self, text: str, timeout: float = 30, *, whole: bool = False) -> None:
        """Returns once a line holds ``text`` (is it, with ``whole``); fails, naming what came,
        after ``timeout`` seconds or at the end of the stream."""
        with self.changed:
            self.changed.wait_for(lambda: self._holds(text, whole) or self.ended, timeout)
            assert self._holds(text, whole), (text, self.lines)

    def text(self) -> str:
        with self.changed:
            return "\n".join(self.lines)


class Launched:
    """A real launcher of ``argv``, in a process group of its own with its child, which the end
    of the ``with`` block kills whole: a pipe held by an orphaned child never hangs a test."""

    def __init__(self, *argv: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.stdout = Stream(self.process.stdout)
        self.stderr = Stream(self.process.stderr)

    def __enter__(self) -> Launched:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.exits(timeout=10)

    def running(self) -> bool:
        return self.process.poll() is None

    def exits(self, timeout: float = 20) -> int:
        """The launcher's exit code, once it and its output have ended."""
        code = self.process.wait(timeout=timeout)
        for stream in (self.stdout, self.stderr):
            stream.reader.join(timeout=10)
        return code

    def stops_to_rejoin(self, child: str) -> str:
        """Waits for the launcher, which should stop its child within seconds and exit to be
        started again; returns what it logged."""
        stopped = time.monotonic()
        assert self.exits() == REJOIN_EXIT, self.stderr.text()
        # The watch looks once a second; seconds more for a machine busy with other work.
        assert time.monotonic() - stopped < 10
        assert f"{child}: SIGTERM" in self.stdout.text()
        return self.stderr.text()


def stage_launched(port: int) -> Launched:
    flags = ["--nnodes", "2", "--node-rank", "1", "--master-port", str(port), "--headless"]
    return Launched(sys.executable, "-c", STAGE, str(port), *flags, "0")


def test_a_stage_stops_when_its_head_goes_and_exits_for_a_restart(head: socket.socket) -> None:
    port = head.getsockname()[1]
    with stage_launched(port) as launcher:
        accepted = accept(head, 2)
        launcher.stdout.wait_for("stage: joined", whole=True)
        launcher.stderr.wait_for(
            f"joined the head at 127.0.0.1:{port} (2 connections to its master port)"
        )
        time.sleep(1.5)  # more than one look of the watch: the head is there, so the stage runs
        assert launcher.running()
        # The head stops: its connections and its listener close.
        for connection in accepted:
            connection.close()
        head.close()
        stderr = launcher.stops_to_rejoin("stage")
    assert (
        f"the head at 127.0.0.1:{port} has gone (no connection to its master port left):"
        f" stopping, to be started again (exit {REJOIN_EXIT}) and rejoin"
    ) in stderr


def test_a_stage_waiting_for_its_first_head_is_left_alone(head: socket.socket) -> None:
    # A port nothing listens on: the stage keeps trying to join, and the launcher lets it.
    port = head.getsockname()[1]
    head.close()
    accepted: list[socket.socket] = []
    with stage_launched(port) as launcher:
        time.sleep(1.5)
        assert launcher.running()
        # Then a head comes up there, and the stage joins it.
        with socket.create_server(("127.0.0.1", port)) as late_head:
            accepted = accept(late_head, 2)
        launcher.stdout.wait_for("stage: joined", whole=True)
        launcher.stderr.wait_for(f"joined the head at 127.0.0.1:{port}")
        time.sleep(0.6)
        assert launcher.running()
        launcher.process.terminate()
        assert launcher.exits() == 0, launcher.stderr.text()
    for connection in accepted:
        connection.close()


def join(port: int) -> socket.socket:
    deadline = time.monotonic() + 20
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), source_address=(OTHER_HOST, 0))
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_head_stops_when_a_stage_goes_even_if_it_rejoined() -> None:
    master, health = free_port(), free_port()
    flags = ["--nnodes", "2", "--node-rank", "0", "--master-port", str(master), "--port"]
    with Launched(sys.executable, "-c", HEAD, str(master), *flags, str(health)) as launcher:
        launcher.stdout.wait_for("head: up", whole=True)
        with join(master) as stage:
            # Ready now: the launcher notes the stage's connection (however long a busy machine
            # takes to start it and answer its first /health).
            launcher.stderr.wait_for(f"serving; stages joined from {OTHER_HOST} (1 connections)")
            assert launcher.running()
            # The stage restarts: its connection closes and a new one comes, from the same host.
            stage.close()
            with join(master):
                stderr = launcher.stops_to_rejoin("head")
    assert (
        f"the stage at {OTHER_HOST} has gone (its connection to port {master} closed):"
        f" stopping, to be started again (exit {REJOIN_EXIT}) and rejoin"
    ) in stderr
