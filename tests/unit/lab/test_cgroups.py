"""Per-host cgroups, on directories laid out as cgroupfs lays them out (no root needed)."""

from __future__ import annotations

import os
from pathlib import Path

from hxp_runtime.lab.cgroups import (
    cgroup_dirs,
    cgroup_hierarchies,
    cgroup_pids,
    join_cgroups,
    kill_cgroups,
    lab_cgroups,
    remove_cgroup_tree,
    remove_empty_parents,
)


def test_cgroup_hierarchies(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "systemd").mkdir()
    (tmp_path / "memory").mkdir()
    assert cgroup_hierarchies(tmp_path) == [tmp_path / "unified", tmp_path / "systemd"]
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    assert cgroup_hierarchies(tmp_path) == [tmp_path]


def test_each_unit_of_a_lab_has_its_cgroup_in_every_hierarchy(tmp_path: Path) -> None:
    hierarchies = [tmp_path / "unified", tmp_path / "systemd"]
    assert lab_cgroups("lab-a", hierarchies) == [
        tmp_path / "unified/hxp-lab/lab-a",
        tmp_path / "systemd/hxp-lab/lab-a",
    ]
    assert cgroup_dirs("lab-a", "web", hierarchies) == [
        tmp_path / "unified/hxp-lab/lab-a/web",
        tmp_path / "systemd/hxp-lab/lab-a/web",
    ]


def test_cgroup_pids_reads_the_whole_subtree(tmp_path: Path) -> None:
    (tmp_path / "init.scope").mkdir()
    (tmp_path / "cgroup.procs").write_text("10\n11\n")
    (tmp_path / "init.scope/cgroup.procs").write_text("12\n")
    assert cgroup_pids(tmp_path) == {10, 11, 12}
    assert cgroup_pids(tmp_path / "absent") == set()


def test_kill_cgroups_removes_empty_trees_deepest_first(tmp_path: Path) -> None:
    host = tmp_path / "hxp-lab/lab-a/web"
    (host / "system.slice/sshd.service").mkdir(parents=True)
    (host / "init.scope").mkdir()
    kill_cgroups([host, tmp_path / "absent"])
    assert not host.exists()
    assert (tmp_path / "hxp-lab/lab-a").is_dir()


def test_remove_cgroup_tree_of_nothing(tmp_path: Path) -> None:
    remove_cgroup_tree(tmp_path / "absent")
    assert list(tmp_path.iterdir()) == []


def test_remove_empty_parents_stops_at_a_used_one_or_the_stop(tmp_path: Path) -> None:
    (tmp_path / "hxp-lab/lab-a").mkdir(parents=True)
    (tmp_path / "hxp-lab/lab-b").mkdir()
    remove_empty_parents(tmp_path / "hxp-lab/lab-a", tmp_path)
    assert not (tmp_path / "hxp-lab/lab-a").exists()
    assert (tmp_path / "hxp-lab").is_dir()  # lab-b still uses it
    (tmp_path / "hxp-lab/lab-b").rmdir()
    remove_empty_parents(tmp_path / "hxp-lab", tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert tmp_path.is_dir()  # the stop itself stays


def test_join_cgroups_writes_the_callers_pid(tmp_path: Path) -> None:
    dirs = [tmp_path / "unified", tmp_path / "systemd"]
    for d in dirs:
        d.mkdir()
    join_cgroups(dirs)
    assert [(d / "cgroup.procs").read_text() for d in dirs] == [str(os.getpid())] * 2
