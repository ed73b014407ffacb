"""State every worker of one router shares: drained backends, and what each worker sees.

A directory under the router's runtime directory (the supervisor makes one per run and names
it to its workers in ``HXP_ROUTER_STATE_DIR``) holds two kinds of small files:

    drained/<backend>   the operator drained this backend; the content is the drain's token
    workers/<pid>.json  one worker's live view of every backend, rewritten when it changes

Every worker applies ``drained/`` to its routing and publishes what it applied (the tokens)
with its in-flight counts, so whoever drains a backend can tell when every worker stopped
sending it requests and when the last one finished. The files outlive a reload (SIGHUP) and
a worker's restart; they go with the runtime directory when the router stops.
Writes are atomic (a temporary file renamed over the old one): a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

STATE_ENV = "HXP_ROUTER_STATE_DIR"


class SharedState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._drained = directory / "drained"
        self._workers = directory / "workers"
        self._drained.mkdir(parents=True, exist_ok=True)
        self._workers.mkdir(parents=True, exist_ok=True)

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

    def _write(self, path: Path, text: str) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(text)
        temporary.replace(path)
