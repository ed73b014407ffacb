"""The launcher as the unit's main process: SIGTERM passed on to vLLM, a slow stop logged."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hxp_runtime.host.vllm_launcher import health_url, metrics_url, request_counts

ROOT = Path(__file__).resolve().parents[3]

METRICS = textwrap.dedent(
    """\
    # HELP vllm:num_requests_running Number of requests in model execution batches.
    # TYPE vllm:num_requests_running gauge
    vllm:num_requests_running{engine="0",model_name="chat"} 2.0
    vllm:num_requests_running{engine="1",model_name="chat"} 1.0
    vllm:num_requests_waiting{engine="0",model_name="chat"} 4.0
    vllm:num_requests_waiting_by_reason{reason="capacity"} 9.0
    """
)

# vLLM's stand-in: says it is up, then takes its time over SIGTERM, as an engine that finishes
# its batch first would.
SLOW_CHILD = textwrap.dedent(
    """\
    import signal, sys, time
    def stop(signum, frame):
        print("child: SIGTERM", flush=True)
        time.sleep(1.6)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("child: up", flush=True)
    time.sleep(60)
    """
)

LAUNCHER = textwrap.dedent(
    """\
    import sys
    from hxp_runtime.host.vllm_launcher import Supervisor
    url, *command = sys.argv[1:]
    sys.exit(Supervisor(command, url, interval_s=0.5, stop_timeout="30").run())
    """
)


def test_request_counts_sum_every_engine_and_ignore_similar_names() -> None:
    assert request_counts(METRICS) == (3, 4)
    assert request_counts("") == (0, 0)


def test_metrics_and_health_urls_come_from_the_serve_arguments() -> None:
    argv = ["serve", "/m", "--host", "10.0.0.5", "--port", "11400", "--dtype", "float32"]
    assert metrics_url(argv) == "http://10.0.0.5:11400/metrics"
    assert health_url(argv) == "http://10.0.0.5:11400/health"
    assert metrics_url(["serve", "/m", "--port", "8001"]) == "http://127.0.0.1:8001/metrics"
    assert health_url(["serve", "/m", "--host=10.0.0.6", "--port=8002"]) == (
        "http://10.0.0.6:8002/health"
    )
    assert metrics_url(["serve", "/m"]) is None
    assert health_url(["serve", "/m"]) is None


@pytest.fixture
def metrics_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = METRICS.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


def test_sigterm_reaches_the_child_and_a_slow_stop_is_logged(metrics_server: str) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, metrics_server, sys.executable, "-c", SLOW_CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert launcher.stdout is not None
        assert launcher.stdout.readline().strip() == "child: up"
        sent = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        stdout, stderr = launcher.communicate(timeout=20)
    finally:
        launcher.kill()
    took = time.monotonic() - sent

    assert launcher.returncode == 0
    assert "child: SIGTERM" in stdout
    assert took >= 1.5  # the launcher waited for its child
    lines = stderr.splitlines()
    assert "hxp-vllm-launcher: stopping (killed at 30s): 3 requests running, 4 waiting" in lines
    assert any(
        line.startswith("hxp-vllm-launcher: still stopping after ")
        and line.endswith(": 3 requests running, 4 waiting")
        for line in lines
    ), stderr
    assert any(line.startswith("hxp-vllm-launcher: stopped after ") for line in lines), stderr


def test_a_child_killed_by_a_signal_exits_as_a_shell_reports_it() -> None:
    command = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    launcher = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "http://127.0.0.1:9/metrics", *command],
        check=False,
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert launcher.returncode == 128 + signal.SIGKILL
