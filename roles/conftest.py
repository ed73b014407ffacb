"""Fixtures shared by the roles' Testinfra verifiers.

pytest reads this file for every test below roles/ (the repository's pyproject.toml makes the
repository its rootdir), so each role's molecule/*/tests asks for these fixtures by name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# What every hxp unit and drop-in sets, as `systemctl show` prints it.
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
}


@pytest.fixture(scope="module")
def address(host: Any) -> str:
    """The lab address of the host under test."""
    return str(host.ansible.get_variables()["ansible_host"])


@pytest.fixture(scope="session")
def scenario_secret() -> Callable[[str], str]:
    """Reads a secret the scenario's prepare step wrote under its ephemeral directory."""
    secrets = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "secrets"
    return lambda name: (secrets / name).read_text().strip()


@pytest.fixture(scope="module")
def unit_properties(host: Any) -> Callable[..., dict[str, str]]:
    """unit_properties(unit, *names): the named properties of a unit, from `systemctl show`."""

    def read(unit: str, *names: str) -> dict[str, str]:
        output = host.check_output(f"systemctl show {unit} " + " ".join(f"-p {n}" for n in names))
        return dict(line.split("=", 1) for line in output.splitlines())

    return read


@pytest.fixture(scope="module")
def assert_hardened(
    unit_properties: Callable[..., dict[str, str]],
) -> Callable[..., dict[str, str]]:
    """assert_hardened(unit, *more): checks HARDENING, returns it with the properties in more."""

    def check(unit: str, *more: str) -> dict[str, str]:
        properties = unit_properties(unit, *HARDENING, *more)
        for name, expected in HARDENING.items():
            assert properties[name] == expected, f"{unit}: {name}={properties[name]!r}"
        return properties

    return check


@dataclass(frozen=True)
class PlayRun:
    """One ansible-playbook run: its exit status and plain-text output."""

    returncode: int
    stdout: str
    stderr: str

    def recap(self, host: str) -> dict[str, int]:
        """The PLAY RECAP counters of host: ok, changed, failed, ..."""
        line = next((ln for ln in self.stdout.splitlines() if ln.startswith(f"{host} ")), None)
        assert line, f"no recap for {host} in:\n{self.stdout[-3000:]}"
        return {name: int(count) for name, count in re.findall(r"(\w+)=(\d+)", line)}


@pytest.fixture
def converge(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], PlayRun]:
    """converge(extra_vars): the scenario's converge playbook once more, on its lab hosts."""
    scenario = request.path.parents[1]

    def run(extra_vars: dict[str, Any]) -> PlayRun:
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("ansible-playbook")),
                *("-i", os.environ["MOLECULE_INVENTORY_FILE"]),
                *("-e", json.dumps(extra_vars)),
                str(scenario / "converge.yml"),
            ],
            capture_output=True,
            text=True,
            env={
                **os.environ,
                "ANSIBLE_ROLES_PATH": str(scenario.parents[2]),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
            },
            check=False,
        )
        return PlayRun(done.returncode, done.stdout, done.stderr)

    return run
