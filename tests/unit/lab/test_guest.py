"""What a lab host boots with: the files written into its overlay, its SSH key command."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from hxp_runtime.lab.guest import (
    GuestRoot,
    apt_proxy_conf,
    etc_hosts,
    keygen_command,
    network_unit,
    write_guest_files,
)
from hxp_runtime.lab.spec import LabSpec


def test_etc_hosts_names_every_host(spec: LabSpec) -> None:
    hosts = etc_hosts(spec)
    assert "10.99.5.10\tllm-1\n" in hosts and "10.99.5.11\tdb-1\n" in hosts
    assert "127.0.0.1\tlocalhost" in hosts
    assert hosts.endswith("\n")


def test_network_unit_is_static_on_the_lab_subnet(spec: LabSpec) -> None:
    unit = network_unit(spec, spec.hosts[1])
    assert "Name=host0" in unit
    assert "Address=10.99.5.11/24" in unit and "Gateway=10.99.5.1" in unit
    assert "LinkLocalAddressing=no" in unit and "IPv6AcceptRA=no" in unit
    assert "DHCP" not in unit


def test_apt_goes_through_the_lab_proxy_without_pipelining(spec: LabSpec) -> None:
    conf = apt_proxy_conf(spec)
    settings = [line for line in conf.splitlines() if not line.startswith(("#", "//"))]
    assert settings == [
        'Acquire::http::Proxy "http://10.99.5.1:3142";',
        'Acquire::http::Pipeline-Depth "0";',
        'Acquire::http::Timeout "60";',
    ]
    comments = [line for line in conf.splitlines() if line.startswith("//")]
    assert any("deadlock" in line for line in comments)


def test_keygen_command(spec: LabSpec) -> None:
    argv = keygen_command(spec)
    assert argv[0] == "ssh-keygen"
    assert argv[argv.index("-t") + 1] == "ed25519"
    assert argv[argv.index("-N") + 1] == ""  # no passphrase: Ansible uses it unattended
    assert argv[argv.index("-C") + 1] == "hxp-lab-unit-lab"
    assert argv[argv.index("-f") + 1] == str(spec.key_file)


def test_guest_root_layout(tmp_path: Path) -> None:
    guest = GuestRoot(tmp_path / "hosts/web")
    assert (guest.upper, guest.work, guest.root) == (
        tmp_path / "hosts/web/upper",
        tmp_path / "hosts/web/work",
        tmp_path / "hosts/web/root",
    )


def write_key(spec: LabSpec) -> str:
    public = "ssh-ed25519 AAAAunit hxp-lab-unit-lab\n"
    spec.key_file.parent.mkdir(parents=True, exist_ok=True)
    spec.key_file.with_suffix(".pub").write_text(public)
    return public


def test_guest_files(tmp_path: Path, spec: LabSpec) -> None:
    public = write_key(spec)
    root = tmp_path / "root"
    (root / "root").mkdir(parents=True)
    write_guest_files(spec, spec.hosts[1], root, fresh=True)
    assert (root / "etc/hostname").read_text() == "db-1\n"
    assert (root / "etc/hosts").read_text() == etc_hosts(spec)
    network = root / "etc/systemd/network/50-hxp-lab.network"
    assert network.read_text() == network_unit(spec, spec.hosts[1])
    assert (root / "etc/apt/apt.conf.d/00hxp-lab-proxy").read_text() == apt_proxy_conf(spec)
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_text() == public
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.parent.stat().st_mode) == 0o700
    machine_id = (root / "etc/machine-id").read_text()
    assert len(machine_id) == 33 and set(machine_id.strip()) <= set("0123456789abcdef")


def test_a_machine_id_is_written_once(tmp_path: Path, spec: LabSpec) -> None:
    write_key(spec)
    root = tmp_path / "root"
    (root / "root").mkdir(parents=True)
    write_guest_files(spec, spec.hosts[0], root, fresh=True)
    first = (root / "etc/machine-id").read_text()
    write_guest_files(spec, spec.hosts[0], root, fresh=False)
    assert (root / "etc/machine-id").read_text() == first
    other = tmp_path / "other"
    (other / "root").mkdir(parents=True)
    write_guest_files(spec, spec.hosts[0], other, fresh=True)
    assert (other / "etc/machine-id").read_text() != first


@pytest.mark.skipif(not shutil.which("apt-config"), reason="apt-config is not installed")
def test_apt_reads_the_proxy_conf_as_written(spec: LabSpec, tmp_path: Path) -> None:
    conf = tmp_path / "00hxp-lab-proxy"
    conf.write_text(apt_proxy_conf(spec))
    dump = subprocess.run(
        ["apt-config", "-c", str(conf), "dump", "Acquire::http"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert 'Acquire::http::Proxy "http://10.99.5.1:3142";' in dump
    assert 'Acquire::http::Pipeline-Depth "0";' in dump
    assert 'Acquire::http::Timeout "60";' in dump
