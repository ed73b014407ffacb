"""What `hxp status` runs on each host: one stdlib-only script, sent on stdin to the host's
python3, that gathers everything local to the host and prints one JSON object.

Its input is a mapping (see :func:`gather`) appended to this file's source by
:func:`remote_script`; the secrets it needs (API keys, the metrics password) travel inside the
script on stdin, never on a command line. It must run on the hosts' Python (Debian's 3.11) with
the standard library only: nothing here imports hxp.
"""

import base64
import concurrent.futures
import json
import os
import subprocess
import urllib.error
import urllib.request
from typing import Any

UNIT_PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "StateChangeTimestamp",
    "NRestarts",
)
HTTP_TIMEOUT_S = 2.0
MAX_BODY_BYTES = 1_000_000


def units(names: list[str]) -> dict[str, dict[str, Any]]:
    """Each unit's state from one ``systemctl show`` (timestamps in seconds since the epoch)."""
    if not names:
        return {}
    try:
        shown = subprocess.run(
            [
                "systemctl",
                "show",
                "--timestamp=unix",
                "--property=" + ",".join(UNIT_PROPERTIES),
                "--",
                *names,
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {name: {"error": f"systemctl show failed: {exc}"} for name in names}
    found: dict[str, dict[str, str]] = {}
    for block in shown.stdout.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if fields.get("Id"):
            found[fields["Id"]] = fields
    result: dict[str, dict[str, Any]] = {}
    for name in names:
        unit = found.get(name if name.endswith(".service") else name + ".service")
        if unit is None:
            result[name] = {"error": shown.stderr.strip() or "systemctl show gave nothing"}
            continue
        since = unit.get("StateChangeTimestamp", "").lstrip("@")
        restarts = unit.get("NRestarts", "")
        result[name] = {
            "load": unit.get("LoadState"),
            "active": unit.get("ActiveState"),
            "sub": unit.get("SubState"),
            "since": int(since) if since.isdigit() else None,
            "restarts": int(restarts) if restarts.isdigit() else None,
        }
    return result


def skipped(directory: str) -> dict[str, str]:
    """Services a deploy set up without running them: marker file name -> the reason inside."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return {}
    reasons = {}
    for name in names:
        with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as marker:
            reasons[name] = marker.read(4096).strip()
    return reasons


def fetch(check: dict[str, Any]) -> dict[str, Any]:
    """One HTTP GET: {status, body (JSON when it is), error}; never raises."""
    headers = dict(check.get("headers") or {})
    if check.get("basic_auth"):
        user, password = check["basic_auth"]
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = "Basic " + token
    # Only http:// URLs that targets.py builds from hxp.yml's addresses and ports.
    request = urllib.request.Request(check["url"], headers=headers)  # noqa: S310
    status, raw, error = None, b"", None
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
            status, raw = response.status, response.read(MAX_BODY_BYTES)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(MAX_BODY_BYTES)
    except (OSError, ValueError) as exc:
        error = str(getattr(exc, "reason", None) or exc)
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw[:200].decode(errors="replace")
    return {"status": status, "body": body, "error": error}


def gather(params: dict[str, Any]) -> dict[str, Any]:
    """``params``: {"units": [unit, ...], "skipped_dir": path, "http": {key: {"url", "headers",
    "basic_auth"}}} -> {"units": ..., "skipped": ..., "http": {key: fetch result}}."""
    checks = params.get("http") or {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(checks))) as pool:
        pending = {key: pool.submit(fetch, check) for key, check in checks.items()}
        state = units(params.get("units") or [])
        answers = {key: future.result() for key, future in pending.items()}
    return {
        "units": state,
        "skipped": skipped(params["skipped_dir"]),
        "http": answers,
    }


def remote_script(params: dict[str, Any]) -> str:
    """This module's source with a call of :func:`gather` on ``params``: what a host runs."""
    with open(__file__, encoding="utf-8") as source:
        code = source.read()
    encoded = base64.b64encode(json.dumps(params).encode()).decode()
    return f"{code}\n\nprint(json.dumps(gather(json.loads(base64.b64decode({encoded!r})))))\n"
