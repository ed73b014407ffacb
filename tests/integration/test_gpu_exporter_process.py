"""The GPU exporter as a real process on loopback (this machine has no NVIDIA driver)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request

from tests.vllm_servers import REPO, free_port

# The file the vllm role copies, run the way its unit runs it: a script, outside any package.
SCRIPT = REPO / "roles" / "vllm" / "files" / "gpu_exporter.py"


def exporter(port: int) -> list[str]:
    return [sys.executable, str(SCRIPT), "--address", "127.0.0.1", "--port", str(port)]


def scrape_when_up(port: int, process: subprocess.Popen[str], timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                return str(answer.read().decode())
        except OSError:
            assert process.poll() is None, "the exporter exited"
            assert time.monotonic() < deadline, f"the exporter did not answer in {timeout} s"
            time.sleep(0.2)


def test_exporter_serves_metrics_and_stops_on_sigterm() -> None:
    port = free_port()
    with subprocess.Popen(exporter(port), cwd=REPO, stderr=subprocess.PIPE, text=True) as process:
        try:
            body = scrape_when_up(port, process)
            assert "hxp_gpu_nvml_up 0.0" in body
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
            assert process.returncode == 0, stderr
        finally:
            process.kill()


def test_exporter_reports_a_port_it_cannot_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            exporter(port), cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
