"""One SSH connection per host, all hosts at once, each running the probe script on stdin.

SSH is called as Ansible would call it: user, port and address from the rendered inventory
(hxp.yml), then overridden by the inventories merged at deploy time (the lab's: its key, its
user, its SSH options), read from their ``all.vars`` and ``all.hosts``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hxp_runtime.status import probe
from hxp_runtime.status.targets import HostTarget

CONNECT_TIMEOUT_S = 3
HOST_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class SshSettings:
    host: str
    user: str
    port: int
    key_file: str | None = None
    common_args: str = ""
    python: str = "python3"

    def command(self) -> list[str]:
        args = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-p",
            str(self.port),
        ]
        if self.key_file:
            args += ["-i", self.key_file]
        args += shlex.split(self.common_args)
        return [*args, f"{self.user}@{self.host}", self.python, "-"]


def inventory_vars(inventories: list[Path], host: str) -> dict[str, Any]:
    """``all.vars`` then ``all.hosts.HOST`` of each inventory, later ones winning."""
    merged: dict[str, Any] = {}
    for inventory in inventories:
        data = yaml.safe_load(inventory.read_text(encoding="utf-8")) or {}
        group = data.get("all") or {}
        merged.update(group.get("vars") or {})
        merged.update((group.get("hosts") or {}).get(host) or {})
    return merged


def ssh_settings(target: HostTarget, inventories: list[Path]) -> SshSettings:
    found = inventory_vars(inventories, target.name)
    return SshSettings(
        host=str(found.get("ansible_host", target.address)),
        user=str(found.get("ansible_user", target.ssh_user)),
        port=int(found.get("ansible_port", target.ssh_port)),
        key_file=found.get("ansible_ssh_private_key_file"),
        common_args=str(found.get("ansible_ssh_common_args", "")),
        python=str(found.get("ansible_python_interpreter", "python3")),
    )


@dataclass(frozen=True)
class HostAnswer:
    """What one host's probe printed (``facts``), or why there is nothing (``error``)."""

    host: str
    facts: dict[str, Any] | None
    error: str | None
    seconds: float


def run_probe(command: list[str], host: str, params: dict[str, Any]) -> HostAnswer:
    """Run the probe with ``command`` (ssh ... python3 -, or a local python3 -)."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            input=probe.remote_script(params),
            capture_output=True,
            text=True,
            timeout=HOST_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return HostAnswer(host, None, f"no answer within {HOST_TIMEOUT_S:g} s", _since(started))
    except OSError as exc:
        return HostAnswer(host, None, f"cannot run {command[0]}: {exc}", _since(started))
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return HostAnswer(host, None, f"unreachable: {reason[0]}", _since(started))
    try:
        facts = json.loads(done.stdout)
    except ValueError:
        return HostAnswer(host, None, "the probe printed no JSON", _since(started))
    return HostAnswer(host, facts, None, _since(started))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def collect(
    jobs: list[tuple[HostTarget, list[str], dict[str, Any]]],
) -> dict[str, HostAnswer]:
    """Every (target, command, params) at once; host name -> its answer."""
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = {
            target.name: pool.submit(run_probe, command, target.name, params)
            for target, command, params in jobs
        }
        return {name: future.result() for name, future in futures.items()}
