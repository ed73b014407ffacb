"""Role vllm's start waves (tasks/start_wave.yml) on a real systemd host of a one-host lab.

Units that stand in for model servers (a sleep, ready after its ExecStartPost, as vllm_ready.py
makes a vLLM unit ready only once it answers) are started as one wave: every one starts before
any is ready, a unit that never becomes ready stops the play with its name, its state and its
journal, and a second run of a wave that is up changes nothing.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ansible_runner
import pytest
from rich.console import Console

from hxp_runtime.deploy import Progress

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(
        not (shutil.which("systemd-nspawn") and shutil.which("debootstrap")),
        reason="systemd-nspawn or debootstrap is not installed (run scripts/setup)",
    ),
]

REPO = Path(__file__).resolve().parents[2]
READY_AFTER_S = 3
UNIT = """\
[Unit]
Description=stand-in for a model server ({name})

[Service]
Type=exec
ExecStart=/bin/sleep infinity
ExecStartPost=/bin/sh -c 'echo "{name}: checking readiness"; sleep {ready_after}; {ready}'

[Install]
WantedBy=multi-user.target
"""
PLAY = """\
- name: Start one wave
  hosts: all
  gather_facts: false
  tasks:
    - name: Start the wave
      ansible.builtin.include_role:
        name: vllm
        tasks_from: start_wave
      vars:
        _hxp_vllm_wave: 1
        _hxp_vllm_wave_servers: "{{ servers }}"
"""


def hxp(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "hxp_runtime.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, f"hxp {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return json.loads(done.stdout)["result"] if "--json" in args else {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("wave")
    config = directory / "hxp.yml"
    name = f"it-wave-{uuid.uuid4().hex[:6]}"
    config.write_text(
        f"version: 1\nname: {name}\nlab: {{state_dir: state}}\n"
        "hosts:\n  - {name: llm, address: 10.77.0.10, groups: [llm]}\n"
    )
    try:
        yield {**hxp("lab", "up", "--auto-network", "--json", str(config)), "dir": directory}
    finally:
        subprocess.run(
            [sys.executable, "-m", "hxp_runtime.cli", "lab", "down", str(config)],
            capture_output=True,
            check=False,
            timeout=300,
        )


def on_host(lab: dict[str, Any], command: str) -> str:
    """command's output on the lab host, through the play's own way in: Ansible's inventory."""
    done = subprocess.run(
        [
            "ansible",
            "all",
            "-i",
            lab["inventory"],
            "-m",
            "ansible.builtin.shell",
            "-a",
            command,
            "-o",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split("(stdout)", 1)[1].strip().replace("\\n", "\n")


def start_wave(lab: dict[str, Any], units: list[str], run: str) -> tuple[int, Progress, str]:
    project = lab["dir"] / run
    (project / "runner").mkdir(parents=True)
    (project / "wave.yml").write_text(PLAY)
    buffer = io.StringIO()
    progress = Progress(Console(file=buffer, width=400))
    result = ansible_runner.run(
        private_data_dir=str(project / "runner"),
        project_dir=str(project),
        playbook="wave.yml",
        inventory=lab["inventory"],
        extravars={"servers": [{"unit": unit} for unit in units]},
        envvars={"ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_HOST_KEY_CHECKING": "False"},
        event_handler=progress,
        quiet=True,
    )
    return result.rc, progress, buffer.getvalue()


def install(lab: dict[str, Any], name: str, ready: bool) -> str:
    unit = f"hxp-wave-{name}"
    text = UNIT.format(name=name, ready_after=READY_AFTER_S, ready="true" if ready else "false")
    encoded = base64.b64encode(text.encode()).decode()
    on_host(lab, f"echo {encoded} | base64 -d > /etc/systemd/system/{unit}.service")
    return unit


def timestamps(lab: dict[str, Any], units: list[str]) -> dict[str, tuple[int, int]]:
    """Each unit's start and ready moments (monotonic µs): ExecMainStart, ActiveEnter."""
    shown = on_host(
        lab,
        " ; ".join(
            f"systemctl show {u} -p ExecMainStartTimestampMonotonic "
            f"-p ActiveEnterTimestampMonotonic --value | paste -sd ' '"
            for u in units
        ),
    )
    pairs = [tuple(int(n) for n in line.split()) for line in shown.splitlines()]
    return dict(zip(units, pairs, strict=True))  # type: ignore[arg-type]


def test_a_wave_starts_together_stops_on_a_server_that_is_not_ready_and_runs_again_unchanged(
    lab: dict[str, Any],
) -> None:
    good = [install(lab, name, ready=True) for name in ("a", "b", "c")]
    on_host(lab, "systemctl daemon-reload")

    rc, progress, output = start_wave(lab, good, "first")
    assert rc == 0, output
    moments = timestamps(lab, good)
    last_start = max(start for start, _ in moments.values())
    first_ready = min(ready for _, ready in moments.values())
    # Together: each began before any was ready (one after another, each would wait 3 s).
    assert last_start < first_ready, moments
    assert progress.counts["llm"]["changed"] >= 1

    rc, progress, output = start_wave(lab, good, "again")
    assert rc == 0, output
    assert progress.counts["llm"]["changed"] == 0, progress.changes

    bad = install(lab, "broken", ready=False)
    on_host(lab, "systemctl daemon-reload")
    rc, progress, output = start_wave(lab, [*good, bad], "broken")
    assert rc != 0
    (failure,) = progress.failures
    assert f"{bad} is failed, not ready" in failure, failure
    assert "broken: checking readiness" in failure, failure  # its journal
    assert not any(f"{unit} is" in failure for unit in good), failure
