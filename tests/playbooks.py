"""A play of this repository's roles, run by ansible-runner in a test and read the way `hxp
deploy` reads its runs (hxp_runtime.deploy.Progress: per-host counts, failures, changes)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import ansible_runner
from rich.console import Console

from hxp_runtime.deploy import PROJECT_ROOT, Progress


def run_play(
    directory: Path,
    play: str,
    inventory: str,
    extravars: dict[str, Any],
    envvars: dict[str, str] | None = None,
) -> tuple[int, Progress, str]:
    """Runs ``play`` (a playbook's text) from ``directory``, with the roles of this repository;
    returns ansible-runner's exit status, the run's Progress and what it printed."""
    (directory / "runner").mkdir(parents=True, exist_ok=True)
    (directory / "play.yml").write_text(play)
    buffer = io.StringIO()
    progress = Progress(Console(file=buffer, width=400))
    result = ansible_runner.run(
        private_data_dir=str(directory / "runner"),
        project_dir=str(directory),
        playbook="play.yml",
        inventory=inventory,
        extravars=extravars,
        envvars={"ANSIBLE_ROLES_PATH": str(PROJECT_ROOT / "roles"), **(envvars or {})},
        event_handler=progress,
        quiet=True,
    )
    return result.rc, progress, buffer.getvalue()
