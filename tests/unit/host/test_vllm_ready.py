"""The readiness check's command line: gives up at once when the server process is gone."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from hxp_runtime.host.vllm_ready import main


def closed_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_dead_server_process_ends_the_wait_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    started = time.monotonic()
    url = f"http://127.0.0.1:{closed_loopback_port()}"
    code = main(["--url", url, "--model", "phi3", "--pid", str(gone.pid), "--timeout", "60"])
    assert code == 1
    assert time.monotonic() - started < 10
    assert "phi3: the server exited before it was ready" in capsys.readouterr().err


@pytest.mark.slow
def test_no_server_and_no_pid_waits_for_the_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_loopback_port()}"
    code = main(["--url", url, "--model", "phi3", "--timeout", "1", "--interval", "0.2"])
    assert code == 1
    err = capsys.readouterr().err
    assert "phi3: not ready after 1 s" in err
    assert "did not answer" in err
