"""Role vllm's start waves (tasks/start_wave.yml) on a real systemd host of a one-host lab.

Units that stand in for model servers (a sleep, ready after its ExecStartPost, as vllm_ready.py
makes a vLLM unit ready only once it answers) are started as one wave: every one starts before
any is ready, a unit that never becomes ready stops the play with its name, its state and its
journal, and a second run of a wave that is up changes nothing.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hxp_runtime.deploy import Progress
from tests.integration.labs import NEEDS_LAB, hxp
from tests.playbooks import run_play

pytestmark = NEEDS_LAB

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
        up = hxp("lab", "up", "--auto-network", "--json", str(config))
        yield {**json.loads(up.stdout)["result"], "dir": directory, "config": config}
    finally:
        hxp("lab", "down", str(config), check=False)


def on_host(lab: dict[str, Any], command: str) -> str:
    """command's output on the lab host (`hxp lab ssh`)."""
    return hxp("lab", "ssh", str(lab["config"]), "llm", "--", command).stdout


def start_wave(lab: dict[str, Any], units: list[str], run: str) -> tuple[int, Progress, str]:
    return run_play(
        lab["dir"] / run,
        PLAY,
        lab["inventory"],
        {"servers": [{"unit": unit} for unit in units]},
        {"ANSIBLE_HOST_KEY_CHECKING": "False"},
    )


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
