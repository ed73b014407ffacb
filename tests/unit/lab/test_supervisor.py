"""A host's supervisor: the commands it runs, its reboot loop, the controller's view of it."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hxp_runtime.lab import supervisor
from hxp_runtime.lab.spec import LabSpec
from hxp_runtime.lab.supervisor import (
    REBOOT_EXIT_CODE,
    HostMachine,
    main,
    nspawn_command,
    parse_arguments,
    supervise,
    supervisor_command,
    supervisor_marker,
)
from tests.unit.lab.conftest import Sleeper


def test_nspawn_command(spec: LabSpec) -> None:
    argv = nspawn_command(spec, spec.hosts[0], Path("/root-dir"))
    assert argv[0] == "systemd-nspawn"
    for flag in (
        "--boot",
        "--directory=/root-dir",
        "--machine=unit-lab-llm-1",
        "--register=no",
        "--keep-unit",
        "--network-bridge=hxpunit0",
        "--console=passive",
        "--resolv-conf=off",
    ):
        assert flag in argv


def test_supervisor_command_round_trips_through_its_parser(spec: LabSpec) -> None:
    host = spec.hosts[1]
    argv = supervisor_command(spec, host, Path("/r"))
    assert argv[:4] == [sys.executable, "-m", "hxp_runtime.lab", "supervise"]
    assert supervisor_marker(spec, host) in argv
    parsed = parse_arguments(argv[3:])
    assert parsed == ("unit-lab", "db-1", nspawn_command(spec, host, Path("/r")))


@pytest.mark.parametrize(
    "args",
    [[], ["supervise", "--lab=a", "--host=b", "cmd"], ["run", "--lab=a", "--host=b", "--", "x"]],
)
def test_main_refuses_what_it_cannot_run(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_arguments(args) is None
    assert main(args) == 2
    assert capsys.readouterr().out.startswith("usage: python -m hxp_runtime.lab supervise")


def test_the_package_runs_as_the_supervisor() -> None:
    # `up` starts supervisors as `python -m hxp_runtime.lab`: the package must stay runnable.
    result = subprocess.run(
        [sys.executable, "-m", "hxp_runtime.lab"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "usage: python -m hxp_runtime.lab supervise" in result.stdout


@pytest.fixture
def fake_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The host's cgroup is a plain directory; the handlers supervise() installs are undone."""
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    monkeypatch.setattr(supervisor, "cgroup_dirs", lambda lab, host: [cgroup])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield cgroup
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_a_reboot_boots_the_host_again(
    tmp_path: Path, fake_cgroups: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    boots = tmp_path / "boots"
    # Stands in for systemd-nspawn: the first boot ends in a reboot, the second in a poweroff.
    guest = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]); "
        "p.write_text(p.read_text() + 'boot\\n') if p.exists() else p.write_text('boot\\n'); "
        f"sys.exit({REBOOT_EXIT_CODE} if p.read_text().count('boot') == 1 else 5)"
    )
    code = supervise("unit-lab", "web", [sys.executable, "-c", guest, str(boots)])
    assert code == 5
    assert boots.read_text() == "boot\nboot\n"
    out = capfd.readouterr().out
    assert "hxp lab: web rebooted; booting it again" in out
    assert "hxp lab: web exited with status 5" in out
    # Each boot joined the host's cgroup (the last pid written is the second boot's).
    assert (fake_cgroups / "cgroup.procs").read_text().isdigit()


def test_host_machine_finds_its_supervisor_by_pid_and_marker(
    tmp_path: Path, spec: LabSpec, sleeper: Sleeper
) -> None:
    host = spec.hosts[0]
    machine = HostMachine(spec, host, tmp_path / "hosts/llm-1")
    assert machine.supervisor_pid() is None
    assert machine.guest_init_pid() is None
    assert machine.system_state() == "stopped"
    proc = sleeper(supervisor_marker(spec, host))
    machine.directory.mkdir(parents=True)
    machine.pid_file.write_text(f"{proc.pid}\n")
    assert machine.supervisor_pid() == proc.pid
    other = HostMachine(spec, spec.hosts[1], machine.directory)
    assert other.supervisor_pid() is None  # the pid runs, but it is not db-1's supervisor
    proc.kill()
    proc.wait()
    assert machine.supervisor_pid() is None


def test_log_tail_shows_the_last_console_lines(tmp_path: Path, spec: LabSpec) -> None:
    machine = HostMachine(spec, spec.hosts[0], tmp_path)
    assert machine.log_tail() == f"last lines of {tmp_path / 'console.log'}:\n"
    machine.console_log.write_text("".join(f"line {i}\n" for i in range(40)))
    tail = machine.log_tail().splitlines()
    assert tail[1:] == [f"line {i}" for i in range(25, 40)]
