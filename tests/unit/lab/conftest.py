"""A small lab config (two hosts on 10.99.5.0/24) and its spec, shared by the lab's unit tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hxp_runtime.lab.spec import LabSpec, load_lab

LAB_CONFIG = """\
version: 1
name: unit-lab
lab:
  bridge: hxpunit0
  gateway: 10.99.5.1/24
  state_dir: state
hosts:
  - name: llm-1
    address: 10.99.5.10
    groups: [llm, cache]
    accelerator: cpu
  - name: db-1
    address: 10.99.5.11
    groups: [database]
database:
  router_password: "file:/tmp/hxp-unit/secrets/db"
"""

SpecOf = Callable[..., LabSpec]
Sleeper = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spec_of(tmp_path: Path) -> SpecOf:
    """The spec of ``text`` (default: LAB_CONFIG) written to tmp_path/hxp.yml."""

    def load(text: str = LAB_CONFIG) -> LabSpec:
        file = tmp_path / "hxp.yml"
        file.write_text(text)
        return load_lab(file)

    return load


@pytest.fixture
def spec(spec_of: SpecOf) -> LabSpec:
    return spec_of()


@pytest.fixture
def sleeper() -> Iterator[Sleeper]:
    """Start a process that sleeps until killed, with its arguments on its command line; it has
    exec'd (its /proc cmdline is its own) when the call returns. Killed at the end of the test."""
    started: list[subprocess.Popen[str]] = []

    def start(*arguments: str) -> subprocess.Popen[str]:
        script = "import sys, time; print('ready', flush=True); time.sleep(60)"
        proc = subprocess.Popen(
            [sys.executable, "-c", script, *arguments], stdout=subprocess.PIPE, text=True
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.communicate()  # reaps it and closes its pipe
