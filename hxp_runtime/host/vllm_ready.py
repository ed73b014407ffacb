"""Readiness of one vLLM server: healthy, serving its name, and able to answer.

A vLLM process answers /health before it can do useful work only in the sense that its engine
is up; hxp calls a server ready when all three hold:

1. ``GET /health`` answers 200;
2. ``GET /v1/models`` lists the served model name;
3. a one-token request succeeds (``/v1/completions``; ``/v1/embeddings`` for embedding models).

Used as the systemd unit's ``ExecStartPost`` (so the unit turns active only when the model
answers, and units ordered ``After=`` it start one at a time), by the integration tests'
server helper, and by hand::

    python -m hxp_runtime.host.vllm_ready --url http://127.0.0.1:11400 --model mixtral --timeout 600

With ``--pid`` (the unit passes ``$MAINPID``) it stops waiting as soon as that process has
exited: systemd keeps an ExecStartPost running after the main process died, so without it a
crashed server would hold the start for the whole timeout.

The API key, when the server requires one, is read from ``VLLM_API_KEY`` (the variable vLLM
itself reads), never from the command line. Standard library only: the ``vllm`` role copies
this file next to the model host's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, Literal

Task = Literal["generate", "embed"]
PROBE_PROMPT = "Hello"
# The one request that shows a server can do its job: (path, body, key the answer must hold).
PROBES: dict[str, tuple[str, dict[str, Any], str]] = {
    "generate": ("/v1/completions", {"prompt": PROBE_PROMPT, "max_tokens": 1}, "choices"),
    "embed": ("/v1/embeddings", {"input": PROBE_PROMPT}, "data"),
}


class NotReady(Exception):
    """The server is not (yet) ready; the message says which check failed."""


def request_json(
    url: str, *, body: dict[str, Any] | None = None, api_key: str | None = None, timeout: float
) -> Any:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 (http only)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            payload = response.read()
    except urllib.error.HTTPError as error:
        raise NotReady(f"{url} answered HTTP {error.code}") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise NotReady(f"{url} did not answer: {reason}") from error
    try:
        return json.loads(payload) if payload else None
    except ValueError as error:
        raise NotReady(f"{url} answered something that is not JSON") from error


def check_ready(
    base_url: str,
    served_name: str,
    *,
    task: Task = "generate",
    api_key: str | None = None,
    timeout: float = 10.0,
) -> None:
    """Raise NotReady naming the first check that fails; return when the server is ready."""
    base = base_url.rstrip("/")
    request_json(f"{base}/health", timeout=timeout)
    models = request_json(f"{base}/v1/models", api_key=api_key, timeout=timeout)
    names = [entry.get("id") for entry in (models or {}).get("data", [])]
    if served_name not in names:
        raise NotReady(f"{base}/v1/models lists {names}, not {served_name!r}")
    path, body, key = PROBES[task]
    answer = request_json(
        f"{base}{path}", body={"model": served_name, **body}, api_key=api_key, timeout=timeout
    )
    if not (answer or {}).get(key):
        raise NotReady(f"{base}{path} returned no {key}")


def wait_ready(
    base_url: str,
    served_name: str,
    *,
    task: Task = "generate",
    api_key: str | None = None,
    timeout: float = 600.0,
    interval: float = 1.0,
    alive: Callable[[], bool] = lambda: True,
) -> float:
    """Poll check_ready until it passes; return the seconds waited.

    `alive` lets a caller that owns the server process stop waiting as soon as it has died.
    Raises NotReady with the last failure when `timeout` passes or `alive()` turns false.
    """
    start = time.monotonic()
    while True:
        try:
            check_ready(base_url, served_name, task=task, api_key=api_key)
            return time.monotonic() - start
        except NotReady as problem:
            waited = time.monotonic() - start
            if not alive():
                raise NotReady(f"the server exited before it was ready ({problem})") from None
            if waited >= timeout:
                raise NotReady(f"not ready after {waited:.0f} s: {problem}") from None
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Wait until a vLLM server is healthy, lists its model and answers.",
    )
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--task", choices=["generate", "embed"], default="generate")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between tries")
    parser.add_argument("--pid", type=int, help="give up once this process (the server) exits")
    args = parser.parse_args(argv)
    try:
        waited = wait_ready(
            args.url,
            args.model,
            task=args.task,
            api_key=os.environ.get("VLLM_API_KEY") or None,
            timeout=args.timeout,
            interval=args.interval,
            alive=(lambda: process_alive(args.pid)) if args.pid else (lambda: True),
        )
    except NotReady as problem:
        print(f"{args.model}: {problem}", file=sys.stderr)
        return 1
    print(f"{args.model}: ready after {waited:.1f} s at {args.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
