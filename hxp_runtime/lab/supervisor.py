"""One lab host's life: a detached supervisor process runs its systemd-nspawn in the host's own
cgroups and boots it again whenever the guest reboots.

:func:`supervise` is the loop (``python -m hxp_runtime.lab supervise``); :class:`HostMachine` is
how the controller starts a host's supervisor, finds it, asks the guest's systemd how it is
doing, and stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hxp_runtime.lab.cgroups import cgroup_dirs, join_cgroups, kill_cgroups
from hxp_runtime.lab.errors import Log
from hxp_runtime.lab.guest import GuestRoot
from hxp_runtime.lab.hostos import (
    STOP_TIMEOUT_S,
    children,
    is_mounted,
    pid_alive,
    read_pid,
    run,
    unmount,
    wait_gone,
    write_file,
)
from hxp_runtime.lab.spec import LabHost, LabSpec

REBOOT_EXIT_CODE = 133  # systemd-nspawn's exit status when the guest asked for a reboot


def nspawn_command(spec: LabSpec, host: LabHost, root: Path) -> list[str]:
    return [
        "systemd-nspawn",
        "--boot",
        f"--directory={root}",
        f"--machine={host.machine(spec.name)}",
        "--register=no",  # no machined/dbus on the controller
        "--keep-unit",  # no systemd on the controller to ask for a scope
        f"--network-bridge={spec.bridge}",
        "--console=passive",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
    ]


def supervisor_marker(spec: LabSpec, host: LabHost) -> str:
    """What the supervisor's command line holds, and no other lab host's does."""
    return f"--machine={host.machine(spec.name)}"


def supervisor_command(spec: LabSpec, host: LabHost, root: Path) -> list[str]:
    """The detached supervisor of ``host`` booting the root mounted at ``root``."""
    return [
        sys.executable,
        "-m",
        "hxp_runtime.lab",
        "supervise",
        supervisor_marker(spec, host),
        f"--lab={spec.name}",
        f"--host={host.name}",
        "--",
        *nspawn_command(spec, host, root),
    ]


@dataclass(frozen=True)
class HostMachine:
    """The controller's handle on one lab host: its directory, supervisor and guest."""

    spec: LabSpec
    host: LabHost
    directory: Path

    @property
    def pid_file(self) -> Path:
        return self.directory / "supervisor.pid"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def cgroups(self) -> list[Path]:
        return cgroup_dirs(self.spec.name, self.host.name)

    def supervisor_pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        if pid is not None and pid_alive(pid, supervisor_marker(self.spec, self.host)):
            return pid
        return None

    def start(self, root: Path) -> subprocess.Popen[bytes]:
        """Start the supervisor booting ``root``, detached (the lab outlives this command)."""
        for d in self.cgroups:
            d.mkdir(parents=True, exist_ok=True)
        log = self.console_log.open("ab")
        proc = subprocess.Popen(
            supervisor_command(self.spec, self.host, root),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        write_file(self.pid_file, f"{proc.pid}\n")
        return proc

    def guest_init_pid(self) -> int | None:
        """The host-side pid of the guest's PID 1 (the child of its systemd-nspawn)."""
        supervisor = self.supervisor_pid()
        nspawn = children(supervisor)[:1] if supervisor is not None else []
        init = children(nspawn[0])[:1] if nspawn else []
        return init[0] if init else None

    def system_state(self) -> str:
        """``systemctl is-system-running`` in the guest; "stopped" when it does not run."""
        pid = self.guest_init_pid()
        if pid is None:
            return "stopped"
        namespaces = ("--mount", "--uts", "--ipc", "--net", "--pid")
        result = run(
            "nsenter", f"--target={pid}", *namespaces, "systemctl", "is-system-running", check=False
        )
        return result.stdout.strip() or "starting"

    def log_tail(self) -> str:
        try:
            tail = self.console_log.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            tail = []
        return f"last lines of {self.console_log}:\n" + "\n".join(tail)

    def stop(self, pid: int | None, log: Log) -> None:
        """Wait for the signalled supervisor ``pid``, then clear the cgroups and the mount."""
        if pid is not None and not wait_gone(pid, STOP_TIMEOUT_S):
            log(f"host {self.host.name} did not power off in {STOP_TIMEOUT_S:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        kill_cgroups(self.cgroups)
        root = GuestRoot(self.directory).root
        if is_mounted(root):
            unmount(root)


# --------------------------------------------------------------------------- the supervisor


def supervise(lab: str, host: str, command: list[str]) -> int:
    """Run one host's systemd-nspawn in the host's own cgroups; boot it again after a reboot.

    Runs detached (its own session) as ``python -m hxp_runtime.lab supervise``. SIGTERM is
    passed on to systemd-nspawn (which powers the guest off) and ends the loop.
    """
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dirs = cgroup_dirs(lab, host)
    while True:
        # The child joins the host's cgroups between fork and exec (the supervisor has no threads).
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: join_cgroups(dirs),  # noqa: PLW1509
        )
        if stopping:  # SIGTERM came while the child was being started
            child.send_signal(signal.SIGTERM)
        code = child.wait()
        if stopping or code != REBOOT_EXIT_CODE:
            print(f"hxp lab: {host} exited with status {code}", flush=True)
            return 0 if stopping else code
        print(f"hxp lab: {host} rebooted; booting it again", flush=True)


def parse_arguments(args: list[str]) -> tuple[str, str, list[str]] | None:
    """(lab, host, command) of ``supervise --machine=M --lab=L --host=H -- CMD...``, or None."""
    if len(args) < 5 or args[0] != "supervise" or "--" not in args:
        return None
    split = args.index("--")
    options = dict(a.removeprefix("--").split("=", 1) for a in args[1:split])
    return options["lab"], options["host"], args[split + 1 :]


def main(argv: list[str] | None = None) -> int:
    parsed = parse_arguments(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        print("usage: python -m hxp_runtime.lab supervise --machine=M --lab=L --host=H -- CMD...")
        return 2
    return supervise(*parsed)
