"""The controller's OS plumbing the lab stands on: commands, files, processes, mounts, links.

Everything here acts on the controller itself (never inside a guest) and knows nothing of labs.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hxp_runtime.lab.errors import LabError

# How long a process signalled with SIGTERM (a guest powering off, apt-cacher-ng) gets to exit.
STOP_TIMEOUT_S = 30.0


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(a) for a in args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise LabError(f"`{' '.join(argv)}` failed (exit {result.returncode}): {detail}")
    return result


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write atomically (temp file + rename) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as stream:
        stream.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Machine-wide lock: base image builds, network allocation, cache merges."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream, fcntl.LOCK_UN)


def ignore_vanished(
    function: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]
) -> None:
    """rmtree error handler: a file another cleanup removed first is gone, which is the goal."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


# --------------------------------------------------------------------------- processes


def pid_alive(pid: int, marker: str) -> bool:
    """``pid`` runs and its command line holds ``marker`` (guards against a recycled pid)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # Reap it if it is our own child (otherwise it lingers as a zombie and stays "alive").
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- mounts


def mounts_under(mountinfo: str, root: Path) -> list[Path]:
    """Mount points at or below ``root`` in /proc/self/mountinfo text, deepest first."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = Path(unescape_mount(fields[4]))
        if point == root or root in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unescape_mount(text: str) -> str:
    """A mount point as /proc/self/mountinfo writes it, with the kernel's escapes undone."""
    # The kernel escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit() and len(text[i + 1 : i + 4]) == 3:
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def is_mounted(path: Path) -> bool:
    return path in mounts_under(mountinfo(), path)


def overlay_mount_command(lower: Path, upper: Path, work: Path, target: Path) -> list[str]:
    return [
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={lower},upperdir={upper},workdir={work}",
        str(target),
    ]


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    run(*overlay_mount_command(lower, upper, work, target))


def unmount(target: Path) -> None:
    run("umount", str(target))


# --------------------------------------------------------------------------- network


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def addresses_networks(ip_json: str) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks in the output of ``ip -j -4 addr show``."""
    return [
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network
        for link in json.loads(ip_json or "[]")
        for a in link.get("addr_info", [])
    ]


def used_networks() -> tuple[list[ipaddress.IPv4Network], set[str]]:
    """The IPv4 networks on this machine's links, and the names of its links."""
    networks = addresses_networks(run("ip", "-j", "-4", "addr", "show").stdout)
    return networks, set(os.listdir("/sys/class/net"))


def create_bridge(name: str) -> None:
    run("ip", "link", "add", name, "type", "bridge")


def configure_bridge(name: str, address: ipaddress.IPv4Interface) -> None:
    """Give the bridge ``address`` (once), no forwarding, and bring it up."""
    # Whatever the controller's ip_forward, nothing arriving from the lab is routed on: the
    # hosts reach the bridge address (apt proxy, SSH from here) and each other, no further.
    Path(f"/proc/sys/net/ipv4/conf/{name}/forwarding").write_text("0\n")
    addresses = run("ip", "-4", "-o", "addr", "show", "dev", name).stdout
    if str(address) not in addresses:
        run("ip", "addr", "add", str(address), "dev", name)
    run("ip", "link", "set", name, "up")


def delete_bridge(name: str) -> None:
    run("ip", "link", "delete", name, "type", "bridge")


def port_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False
