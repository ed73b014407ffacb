"""`hxp deploy`: render the inventory, then run the playbooks through ansible-runner.

Progress is printed as the run goes (one line per task, a summary per host at the end); the
complete event log stays in ansible-runner's artifacts directory (mode 0700: it may hold
facts about the hosts) for later inspection.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
from rich.console import Console
from rich.markup import escape

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The ansible-playbook installed beside this Python, so a venv works without being on PATH.
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Skipped:
    """A service a role set up without running it (its binary is not in the bundle), as the
    role reported it through ``set_stats`` (roles/bundle/tasks/skipped.yml)."""

    service: str
    host: str
    reason: str

    def line(self) -> str:
        return f"skipped: {self.service} on {self.host}: {self.reason}"


def skipped_services(stats_data: dict[str, Any]) -> list[Skipped]:
    """The ``skipped_services`` records of a run's ``playbook_on_stats`` event, each once."""
    records = (stats_data.get("artifact_data") or {}).get("skipped_services") or []
    found = {
        Skipped(str(r["service"]), str(r["host"]), str(r["reason"]).strip())
        for r in records
        if isinstance(r, dict) and {"service", "host", "reason"} <= r.keys()
    }
    return sorted(found, key=lambda s: (s.service, s.host))


@dataclass
class Progress:
    """Turns ansible-runner events into short console lines and per-host counts."""

    console: Console
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        host = data.get("host", "")
        if kind == "playbook_on_stats":
            self.skipped = skipped_services(data)
        elif kind == "playbook_on_play_start":
            self.console.print(f"[bold]PLAY[/] {data.get('play', '')}", highlight=False)
        elif kind == "playbook_on_task_start":
            self.console.print(f"  [dim]task[/] {data.get('task', '')}", highlight=False)
        elif kind in {
            "runner_on_ok",
            "runner_on_failed",
            "runner_on_unreachable",
            "runner_on_skipped",
        }:
            result = data.get("res", {}) or {}
            status = {
                "runner_on_ok": "changed" if result.get("changed") else "ok",
                "runner_on_failed": "ignored" if data.get("ignore_errors") else "failed",
                "runner_on_unreachable": "unreachable",
                "runner_on_skipped": "skipped",
            }[kind]
            self.counts.setdefault(host, Counter())[status] += 1
            if status in {"failed", "unreachable"}:
                message = result.get("msg") or result.get("stderr") or "see the event log"
                # A loop fails as a whole ("One or more items failed"): say which and why.
                item_messages = [
                    str(item["msg"])
                    for item in result.get("results") or []
                    if isinstance(item, dict) and item.get("failed") and item.get("msg")
                ]
                if item_messages:
                    message = "; ".join(item_messages)
                line = f"{host}: {data.get('task', '')}: {message}"
                self.failures.append(line)
                self.console.print(f"    [red]{status}[/] {line}", highlight=False)
            elif status == "changed":
                self.changes.append(f"{host}: {data.get('task', '')}")
                self.console.print(f"    [yellow]changed[/] {host}", highlight=False)
        return True  # keep the event in the artifacts


def _redact_environment(command_file: Path) -> None:
    """ansible-runner records the whole environment, where env: secrets live; keep names only."""
    if not command_file.is_file():
        return
    record = json.loads(command_file.read_text(encoding="utf-8"))
    record["env"] = dict.fromkeys(record.get("env", {}), "(redacted)")
    command_file.write_text(json.dumps(record), encoding="utf-8")


def run_playbook(
    inventory: Path | list[Path],
    *,
    playbook: str = "site.yml",
    state_dir: Path,
    check: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    extra_vars: dict[str, Any] | None = None,
    console: Console,
) -> tuple[int, Progress]:
    """Run ``playbooks/<playbook>`` on ``inventory`` (several are merged in order);
    return (exit status, progress)."""
    inventories = inventory if isinstance(inventory, list) else [inventory]
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    cmdline = []
    if check:
        cmdline += ["--check", "--diff"]
    if tags:
        cmdline += ["--tags", tags]
    progress = Progress(console)
    result = ansible_runner.run(
        private_data_dir=str(state_dir),
        project_dir=str(PROJECT_ROOT / "playbooks"),
        playbook=playbook,
        inventory=[str(p.resolve()) for p in inventories],
        limit=limit,
        cmdline=" ".join(cmdline) or None,
        extravars=extra_vars or {},
        envvars={
            "ANSIBLE_CONFIG": str(PROJECT_ROOT / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(PROJECT_ROOT / "roles"),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        suppress_env_files=True,  # the environment may hold secrets (env: references)
        event_handler=progress,
        quiet=True,
        rotate_artifacts=10,
    )
    _redact_environment(Path(result.config.artifact_dir) / "command")
    for host, counts in sorted(progress.counts.items()):
        summary = " ".join(
            f"{k}={counts[k]}" for k in ("ok", "changed", "failed", "unreachable", "skipped")
        )
        console.print(f"{host:30} {summary}", highlight=False)
    for skipped in progress.skipped:
        console.print(f"[yellow]{escape(skipped.line())}[/]", highlight=False)
    console.print(f"event log: {result.config.artifact_dir}", highlight=False)
    return int(result.rc or 0), progress
