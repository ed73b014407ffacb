"""State every worker of one router shares: drained backends, and what each worker sees.

A directory under the router's runtime directory (the supervisor makes one per run and names
it to its workers in ``HXP_ROUTER_STATE_DIR``) holds three kinds of small files:

    drained/<backend>   the operator drained this backend; the content is the drain's token
    workers/<pid>.json  one worker's live view of every backend, rewritten when it changes
    load/<backend>.json the backend's vLLM load gauges as a worker last read them from its
                        /metrics, with when and from which URL; load/<backend>.lock is held by
                        the worker reading them now

Every worker applies ``drained/`` to its routing and publishes what it applied (the tokens)
with its in-flight counts, so whoever drains a backend can tell when every worker stopped
sending it requests and when the last one finished. One worker polls a backend's /metrics
per interval and the others read its answer (``fresh_load``, ``polling``, ``publish_load``):
vLLM renders /metrics in its API server's one thread, about 9 ms for a 53 kB answer on CPU, so
four workers polling every second each took 4 % of every model server's API core.
The files outlive a reload (SIGHUP) and a worker's restart; they go with the runtime directory
when the router stops.
Writes are atomic (a temporary file renamed over the old one): a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATE_ENV = "HXP_ROUTER_STATE_DIR"


class SharedState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._drained = directory / "drained"
        self._workers = directory / "workers"
        self._load = directory / "load"
        for path in (self._drained, self._workers, self._load):
            path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ drains

    def drained(self) -> dict[str, str]:
        """Drained backend id -> the token of its drain."""
        found = {}
        for path in self._drained.iterdir():
            if not path.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    found[path.name] = path.read_text()
        return found

    def drain(self, backend_id: str) -> str:
        """Mark ``backend_id`` drained; returns the token workers publish once they applied it."""
        token = self.drained().get(backend_id) or secrets.token_hex(8)
        self._write(self._drained / backend_id, token)
        return token

    def undrain(self, backend_id: str) -> bool:
        """Whether it was drained."""
        try:
            (self._drained / backend_id).unlink()
        except FileNotFoundError:
            return False
        return True

    # ------------------------------------------------------------------ workers

    def publish(self, pid: int, view: dict[str, Any]) -> None:
        self._write(self._workers / f"{pid}.json", json.dumps(view, sort_keys=True))

    def forget(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._workers / f"{pid}.json").unlink()

    def views(self) -> dict[int, dict[str, Any]]:
        """Every running worker's last published view; a dead worker's file is removed."""
        found = {}
        for path in self._workers.glob("*.json"):
            pid = int(path.stem)
            if not Path(f"/proc/{pid}").exists():
                self.forget(pid)
                continue
            with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                found[pid] = json.loads(path.read_text())
        return found

    # ------------------------------------------------------------------ load polls

    def fresh_load(self, backend_id: str, url: str, max_age_s: float) -> dict[str, float] | None:
        """The gauges a worker read from ``url`` less than ``max_age_s`` ago, else None.

        The time is the system's monotonic clock, the same in every process of the machine.
        """
        try:
            seen = json.loads((self._load / f"{backend_id}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        # Anything but what publish_load writes is no answer: the monitor that reads it must
        # not fail on a damaged file, it polls the backend instead.
        if not isinstance(seen, dict):
            return None
        at, gauges = seen.get("at"), seen.get("gauges")
        if (
            seen.get("url") != url
            or not isinstance(at, float)
            or not isinstance(gauges, dict)
            or not all(isinstance(v, (int, float)) for v in gauges.values())
            or time.monotonic() - at >= max_age_s
        ):
            return None
        return {str(name): float(value) for name, value in gauges.items()}

    @contextlib.contextmanager
    def polling(self, backend_id: str) -> Iterator[bool]:
        """Whether this worker may poll the backend now: True while no other worker holds its
        lock, which is this worker's until the block ends (or its process does)."""
        fd = os.open(self._load / f"{backend_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def publish_load(self, backend_id: str, url: str, gauges: dict[str, float]) -> None:
        seen = {"url": url, "at": time.monotonic(), "gauges": gauges}
        self._write(self._load / f"{backend_id}.json", json.dumps(seen))

    def _write(self, path: Path, text: str) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(text)
        temporary.replace(path)
