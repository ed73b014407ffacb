"""A host for the probe without SSH: the probe runs here, as `python3 -` with the script on
stdin, against a local HTTP server that answers as vLLM, the router's admin API and Prometheus
do, and a systemctl that prints what a lab host's systemctl printed."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hxp_runtime.router.admin import merge_views
from tests.unit.test_cli_contract import hxp  # noqa: F401 - the fixture, for the command's tests

UPSTREAM_KEY = "upstream-key-0123456789"
ADMIN_KEY = "admin-key-0123456789abcdef"
METRICS_AUTH = ("hxp", "metrics-password-0123")

# A systemctl that answers `systemctl show --timestamp=unix --property=... -- UNIT...` as a
# Debian 12 host does: one block per unit asked, properties in systemd's order (not the order
# asked), a unit that is not installed as LoadState=not-found. The states come from $UNITS_JSON.
FAKE_SYSTEMCTL = """\
#!/usr/bin/env python3
import json, os, sys
states = json.loads(os.environ.get("UNITS_JSON", "{}"))
names = sys.argv[sys.argv.index("--") + 1:]
blocks = []
for name in names:
    unit = name if name.endswith(".service") else name + ".service"
    s = states.get(name, {"load": "not-found", "active": "inactive", "sub": "dead"})
    since = f"@{s['since']}" if s.get("since") else ""
    lines = [f"NRestarts={s['restarts']}"] if "restarts" in s else []
    lines += [f"Id={unit}", f"LoadState={s['load']}", f"ActiveState={s['active']}",
              f"SubState={s['sub']}", f"StateChangeTimestamp={since}"]
    blocks.append("\\n".join(lines))
print("\\n\\n".join(blocks))
"""
RUNNING = {
    "load": "loaded",
    "active": "active",
    "sub": "running",
    "since": 1764567901,
    "restarts": 0,
}


def worker_view(healthy: bool, breaker: str) -> dict[str, Any]:
    state = {"healthy": healthy, "breaker": breaker, "in_flight": 0, "draining": False}
    return {"drains": [], "backends": {"hermes": {**state, "latency_ms": 12.5}}}


BACKENDS = merge_views(
    ["hermes"], {101: worker_view(True, "closed"), 102: worker_view(False, "open")}, {}
)
ALERTS = {
    "status": "success",
    "data": {
        "alerts": [
            {
                "labels": {"alertname": "QdrantDown", "host": "hx-vectordb-server-01"},
                "state": "firing",
                "activeAt": "2026-12-01T05:41:00Z",
            },
            {"labels": {"alertname": "ModelDown", "model": "hermes"}, "state": "pending"},
        ]
    },
}


class Answers(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows the test's own output only."""

    def reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        basic = "Basic " + base64.b64encode(":".join(METRICS_AUTH).encode()).decode()
        if self.path == "/health":
            self.reply(200, {})
        elif self.path == "/v1/models":
            if auth != f"Bearer {UPSTREAM_KEY}":
                self.reply(401, {"error": "Unauthorized"})
                return
            data = [{"id": "hermes-2", "object": "model", "root": "/var/lib/hxp/models/hermes"}]
            self.reply(200, {"object": "list", "data": data})
        elif self.path == "/admin/backends":
            if auth != f"Bearer {ADMIN_KEY}":
                self.reply(401, {"error": "missing or wrong admin key"})
                return
            self.reply(200, BACKENDS)
        elif self.path == "/api/v1/alerts":
            self.reply(200 if auth == basic else 401, ALERTS if auth == basic else {})
        else:
            self.reply(404, {"error": "not found"})


@dataclass(frozen=True)
class LocalHost:
    url: str
    skipped_dir: Path


@pytest.fixture
def local_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHost]:
    """A systemctl on PATH (unit states from $UNITS_JSON), a skipped-services directory and the
    HTTP server; the probe runs as a child process and inherits PATH and UNITS_JSON."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(FAKE_SYSTEMCTL, encoding="utf-8")
    systemctl.chmod(systemctl.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    skipped_dir = tmp_path / "skipped"
    skipped_dir.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LocalHost(f"http://127.0.0.1:{server.server_address[1]}", skipped_dir)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
