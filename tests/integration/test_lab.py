"""`hxp lab` for real: two labs booted side by side, used, rebooted, and removed without a trace.

Needs root, systemd-nspawn and debootstrap (scripts/setup installs them); the first run on a
machine builds the base image (about a minute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hxp_runtime.lab import SSH_OPTIONS, cgroup_hierarchies, mounts_under
from tests.integration.labs import NEEDS_LAB, hxp

pytestmark = NEEDS_LAB


@dataclass
class RunningLab:
    config: Path
    name: str
    info: dict[str, object]

    def address(self, host: str) -> str:
        hosts = self.info["hosts"]
        assert isinstance(hosts, list)
        return next(h["address"] for h in hosts if h["name"] == host)

    def ssh(self, host: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        options = [word for option in SSH_OPTIONS for word in option.split()]
        return subprocess.run(
            [
                "ssh",
                "-i",
                str(self.info["identity_file"]),
                *options,
                "-o",
                "ConnectTimeout=5",
                f"root@{self.address(host)}",
                command,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )


def write_config(directory: Path, name: str, hosts: list[tuple[str, str]]) -> Path:
    lines = [
        "version: 1",
        f"name: {name}",
        "lab: {state_dir: state}",
        "hosts:",
    ]
    for index, (host, group) in enumerate(hosts):
        lines.append(f"  - {{name: {host}, address: 10.77.0.{10 + index}, groups: [{group}]}}")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "hxp.yml"
    config.write_text("\n".join(lines) + "\n")
    return config


def traces(name: str, root: Path) -> dict[str, object]:
    """What a lab named ``name`` with files under ``root`` could leave on this machine."""
    processes = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(root) in cmdline or f"--machine={name}-" in cmdline:
                processes.append(cmdline.replace("\0", " "))
    mounts = mounts_under(Path("/proc/self/mountinfo").read_text(), root)
    cgroups = [
        h / "hxp-lab" / name for h in cgroup_hierarchies() if (h / "hxp-lab" / name).exists()
    ]
    return {
        "processes": processes,
        "mounts": mounts,
        "cgroups": cgroups,
        "registry": Path(f"/run/hxp-lab/{name}.json").exists(),
        "state": (root / "state" / name).exists(),
    }


def links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def addresses() -> str:
    return subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def two_labs(tmp_path: Path) -> Iterator[tuple[RunningLab, RunningLab]]:
    suffix = uuid.uuid4().hex[:6]
    configs = [
        write_config(tmp_path / "a", f"it-a-{suffix}", [("web", "llm"), ("db", "database")]),
        write_config(tmp_path / "b", f"it-b-{suffix}", [("web", "metrics")]),
    ]
    hxp("lab", "image")  # build or extract the base image first: not part of the timing below
    labs: tuple[RunningLab, ...] = ()
    try:
        # Both at once, as concurrent Molecule scenarios do.
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hxp_runtime.cli",
                    "lab",
                    "up",
                    "--auto-network",
                    "--json",
                    str(c),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for c in configs
        ]
        outputs = [p.communicate(timeout=300) for p in procs]
        for proc, (_stdout, stderr) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, stderr
        labs = tuple(
            RunningLab(c, json.loads(out)["result"]["name"], json.loads(out)["result"])
            for c, (out, _) in zip(configs, outputs, strict=True)
        )
        yield labs[0], labs[1]
    finally:
        for config in configs:
            hxp("lab", "down", str(config), check=False)
    # Other labs may come and go on this machine meanwhile: look for this test's own traces.
    bridges = {str(lab.info["bridge"]) for lab in labs}
    gateways = {str(lab.info["gateway"]) for lab in labs}
    # systemd-nspawn names a veth "vb-" + machine name, cut to 15 characters with a hash.
    prefixes = (f"vb-it-a-{suffix[:3]}", f"vb-it-b-{suffix[:3]}")
    veths = {link for link in links() if link.startswith(prefixes)}
    assert not (bridges | veths) & links(), "a bridge or veth was left behind"
    assert not any(g in addresses() for g in gateways)
    for config, name in zip(configs, (f"it-a-{suffix}", f"it-b-{suffix}"), strict=True):
        left = traces(name, config.parent)
        assert left == {
            "processes": [],
            "mounts": [],
            "cgroups": [],
            "registry": False,
            "state": False,
        }, left


def test_up_use_reboot_down(two_labs: tuple[RunningLab, RunningLab]) -> None:
    a, b = two_labs
    assert a.info["bridge"] != b.info["bridge"]
    assert a.info["gateway"] != b.info["gateway"]
    assert links() >= {a.info["bridge"], b.info["bridge"]}
    for bridge in (a.info["bridge"], b.info["bridge"]):
        assert Path(f"/proc/sys/net/ipv4/conf/{bridge}/forwarding").read_text() == "0\n"

    # systemd is PID 1 and the system is up; the host knows its name and its neighbours.
    result = a.ssh(
        "web", "cat /proc/1/comm; systemctl is-system-running; hostname; getent hosts db"
    )
    assert result.returncode == 0, result.stderr
    comm, state, hostname, neighbour = result.stdout.splitlines()
    assert (comm, state, hostname) == ("systemd", "running", "web")
    assert neighbour.split()[0] == a.address("db")

    # Hosts of one lab reach each other; a host of another lab is out of reach.
    probe = "python3 -c \"import socket; socket.create_connection(('{}', 22), timeout=2)\""
    assert a.ssh("web", probe.format(a.address("db"))).returncode == 0
    assert a.ssh("web", probe.format(b.address("web"))).returncode != 0

    # apt's proxy on the bridge answers with the mirror's data.
    fetch = (
        'python3 -c "import urllib.request as u; '
        "o = u.build_opener(u.ProxyHandler({'http': '" + str(a.info["apt_proxy"]) + "'})); "
        "print(o.open('http://deb.debian.org/debian/dists/bookworm/Release', timeout=30)"
        '.read(40).decode())"'
    )
    result = a.ssh("db", fetch, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Origin: Debian" in result.stdout

    # The Ansible inventory works as written.
    inventory = str(a.info["inventory"])
    ping = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible")),
            "-i",
            inventory,
            "all",
            "-m",
            "ansible.builtin.ping",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.count("SUCCESS") == 2

    # `up` again changes nothing: same supervisors.
    state = Path(str(a.info["inventory"])).parent
    pids = {p: p.read_text() for p in sorted(state.glob("hosts/*/supervisor.pid"))}
    hxp("lab", "up", "--auto-network", str(a.config))
    assert {p: p.read_text() for p in pids} == pids

    # A reboot inside the guest boots it again (systemd-nspawn exits 133, the supervisor loops).
    boot_id = a.ssh("db", "cat /proc/sys/kernel/random/boot_id").stdout
    a.ssh("db", "systemctl reboot")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = a.ssh("db", "systemctl is-system-running; cat /proc/sys/kernel/random/boot_id")
        if after.returncode == 0 and after.stdout.split()[-1] != boot_id.strip():
            break
        time.sleep(0.5)
    else:
        pytest.fail("host db did not come back after a reboot")

    status = json.loads(hxp("lab", "status", "--json", str(a.config)).stdout)["result"]
    assert [(h["name"], h["running"]) for h in status["hosts"]] == [("web", True), ("db", True)]

    # A host powered off is gone from the network while the others serve; `up` boots it again
    # with its disk as it was.
    assert a.ssh("db", "echo kept > /root/mark").returncode == 0
    assert hxp("lab", "poweroff", str(a.config), "db").stdout.strip() == "host db powered off"
    status = json.loads(hxp("lab", "status", "--json", str(a.config)).stdout)["result"]
    assert [(h["name"], h["running"]) for h in status["hosts"]] == [("web", True), ("db", False)]
    assert a.ssh("web", probe.format(a.address("db"))).returncode != 0
    assert "db was not running" in hxp("lab", "poweroff", str(a.config), "db").stdout
    unknown = hxp("lab", "poweroff", str(a.config), "nosuch", check=False)
    assert unknown.returncode == 1 and "has no host 'nosuch'" in unknown.stderr
    hxp("lab", "up", "--auto-network", str(a.config))
    assert a.ssh("db", "cat /root/mark").stdout == "kept\n"

    # down is idempotent: the second one finds nothing to remove.
    hxp("lab", "down", str(b.config))
    assert "was not up" in hxp("lab", "down", str(b.config)).stdout


def test_bad_lab_config_changes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"it-bad-{uuid.uuid4().hex[:6]}", [("web", "llm")])
    config.write_text(config.read_text().replace("10.77.0.10", "192.168.10.5"))
    before = links()
    result = hxp("lab", "up", str(config), check=False)
    assert result.returncode == 1
    assert "hxp.yml:5: hosts[0].address: lab host address 192.168.10.5 is not in" in (
        result.stderr.replace("\n", " ")
    )
    assert "Traceback" not in result.stderr
    assert links() == before
    assert not (tmp_path / "state").exists()
