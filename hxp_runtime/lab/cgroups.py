"""Per-host cgroups: each lab host (and the lab's apt proxy) runs in cgroups of its own, so
``down`` finds and kills every process a guest left, and nothing else."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from hxp_runtime.lab.errors import LabError

CGROUP_PARENT = "hxp-lab"


def cgroup_hierarchies(root: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """Where each host gets its own cgroup: the unified and the name=systemd hierarchy.

    On a hybrid layout (cgroup v1 controllers + unified) systemd inside the guest needs its own
    cgroup in both, or restarting a service fails with "Failed to attach ... compat systemd
    cgroup". On a pure cgroup v2 machine the root is the unified hierarchy.
    """
    if (root / "cgroup.controllers").exists():
        return [root]
    return [root / name for name in ("unified", "systemd") if (root / name).is_dir()]


def lab_cgroups(lab: str, hierarchies: Sequence[Path] | None = None) -> list[Path]:
    """The cgroups that hold every unit of lab ``lab``, one per hierarchy."""
    found = cgroup_hierarchies() if hierarchies is None else hierarchies
    return [h / CGROUP_PARENT / lab for h in found]


def cgroup_dirs(lab: str, unit: str, hierarchies: Sequence[Path] | None = None) -> list[Path]:
    """The cgroups of one unit (a host, the apt proxy) of lab ``lab``, one per hierarchy."""
    return [d / unit for d in lab_cgroups(lab, hierarchies)]


def cgroup_pids(directory: Path) -> set[int]:
    """Every pid in the cgroup ``directory`` and the cgroups below it."""
    pids: set[int] = set()
    if directory.is_dir():
        for procs in directory.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


# A killed process stays in its cgroup until its exit completes: a model server unmapping
# gigabytes on a busy machine took over 5 s.
KILL_WAIT_S = 30.0


def kill_cgroups(dirs: Sequence[Path]) -> None:
    """SIGKILL every process left in ``dirs`` (and below), then remove the cgroups."""
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline:
        pids = set().union(*(cgroup_pids(d) for d in dirs))
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for directory in dirs:
        remove_cgroup_tree(directory)


def remove_cgroup_tree(directory: Path) -> None:
    """rmdir ``directory`` and every cgroup below it, deepest first."""
    if not directory.is_dir():
        return
    subdirs = sorted(
        (p for p in directory.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    )
    for sub in [*subdirs, directory]:
        for _ in range(20):  # a cgroup may take a moment to empty after its last process exits
            try:
                sub.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise LabError(f"cgroup {sub} is still busy; check `cat {sub}/cgroup.procs`")


def remove_empty_parents(directory: Path, stop: Path) -> None:
    """rmdir ``directory`` and its parents up to (not including) ``stop`` while they are empty."""
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def join_cgroups(dirs: Sequence[Path]) -> None:
    """Move the calling process into ``dirs`` (run between fork and exec)."""
    for directory in dirs:
        (directory / "cgroup.procs").write_text(str(os.getpid()))
