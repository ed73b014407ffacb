"""The controller's plumbing: commands, atomic files, pids, mountinfo, links, ports."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hxp_runtime.lab.errors import LabError
from hxp_runtime.lab.hostos import (
    addresses_networks,
    children,
    ignore_vanished,
    mounts_under,
    overlay_mount_command,
    pid_alive,
    port_open,
    read_pid,
    run,
    unescape_mount,
    wait_gone,
    write_file,
)
from tests.unit.lab.conftest import Sleeper


def test_run_returns_output_and_names_a_failure() -> None:
    assert run("sh", "-c", "echo out").stdout == "out\n"
    with pytest.raises(LabError, match=r"`sh -c echo bad >&2; exit 3` failed \(exit 3\): bad"):
        run("sh", "-c", "echo bad >&2; exit 3")
    assert run("sh", "-c", "exit 4", check=False).returncode == 4


def test_write_file_replaces_atomically_with_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "deep/dir/file"
    write_file(target, "one\n", 0o600)
    assert target.read_text() == "one\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_file(target, "two\n")
    assert target.read_text() == "two\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["file"]  # no temp file left


def test_read_pid(tmp_path: Path) -> None:
    (tmp_path / "ok.pid").write_text("1234\n")
    (tmp_path / "bad.pid").write_text("x\n")
    assert read_pid(tmp_path / "ok.pid") == 1234
    assert read_pid(tmp_path / "bad.pid") is None
    assert read_pid(tmp_path / "none.pid") is None


def test_pid_alive_wants_the_marker_on_the_command_line(sleeper: Sleeper) -> None:
    proc = sleeper("--machine=unit-lab-llm-1")
    assert pid_alive(proc.pid, "--machine=unit-lab-llm-1")
    assert not pid_alive(proc.pid, "--machine=unit-lab-db-1")  # a recycled pid
    proc.kill()
    proc.wait()
    assert not pid_alive(proc.pid, "--machine=unit-lab-llm-1")


def test_children_and_wait_gone() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(['sleep', '60'])"]
    )
    try:
        # The child is listed from its fork on, but is named sleep only once it has exec'd:
        # on a loaded machine that can come later than the fork.
        comm = ""
        for _ in range(200):
            kids = children(proc.pid)
            comm = Path(f"/proc/{kids[0]}/comm").read_text().strip() if len(kids) == 1 else ""
            if comm == "sleep":
                break
            time.sleep(0.05)
        assert len(kids) == 1
        assert comm == "sleep"
        assert not wait_gone(proc.pid, 0.1)
        os.kill(kids[0], signal.SIGKILL)
        assert wait_gone(proc.pid, 10)  # its child gone, it exits, and is reaped
    finally:
        if proc.poll() is None:
            proc.kill()
    assert children(proc.pid) == []


def test_mounts_under() -> None:
    mountinfo = (
        "22 1 8:1 / / rw - ext4 /dev/vda rw\n"
        "90 22 0:50 / /srv/lab/hosts/a/root rw - overlay overlay rw,lowerdir=/x\n"
        "91 22 0:51 / /srv/lab/apt\\040cache rw - overlay overlay rw\n"
        "92 90 0:52 / /srv/lab/hosts/a/root/proc rw - proc proc rw\n"
        "93 22 0:53 / /srv/laboratory rw - tmpfs tmpfs rw\n"
        "short line\n"
    )
    assert mounts_under(mountinfo, Path("/srv/lab")) == [
        Path("/srv/lab/hosts/a/root/proc"),
        Path("/srv/lab/hosts/a/root"),
        Path("/srv/lab/apt cache"),
    ]
    assert mounts_under(mountinfo, Path("/srv/lab/hosts/a/root")) == [
        Path("/srv/lab/hosts/a/root/proc"),
        Path("/srv/lab/hosts/a/root"),
    ]
    assert mounts_under(mountinfo, Path("/srv/none")) == []


def test_unescape_mount() -> None:
    assert unescape_mount(r"/a\040b\011c\012d\134e") == "/a b\tc\nd\\e"
    assert unescape_mount(r"/plain\04") == r"/plain\04"  # not a full escape: kept
    assert unescape_mount(r"/x\abc") == r"/x\abc"


def test_overlay_mount_command() -> None:
    argv = overlay_mount_command(Path("/l"), Path("/u"), Path("/w"), Path("/t"))
    assert argv == [
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        "lowerdir=/l,upperdir=/u,workdir=/w",
        "/t",
    ]


def test_addresses_networks() -> None:
    ip_json = json.dumps(
        [
            {"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8}]},
            {"ifname": "eth0", "addr_info": [{"local": "10.1.2.3", "prefixlen": 24}]},
            {"ifname": "down"},
        ]
    )
    assert addresses_networks(ip_json) == [
        ipaddress.IPv4Network("127.0.0.0/8"),
        ipaddress.IPv4Network("10.1.2.0/24"),
    ]
    assert addresses_networks("") == []


def test_port_open() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_open("127.0.0.1", port)
    assert not port_open("127.0.0.1", port, timeout=0.2)


def test_removing_state_tolerates_files_another_cleanup_removed_first() -> None:
    gone = FileNotFoundError(2, "No such file or directory", "x")
    ignore_vanished(os.unlink, "x", (FileNotFoundError, gone, None))
    denied = PermissionError(13, "Permission denied", "x")
    with pytest.raises(PermissionError):
        ignore_vanished(os.unlink, "x", (PermissionError, denied, None))
