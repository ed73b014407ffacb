"""A guest's own root: the copy-on-write overlay of the base image a lab host boots from, and
the files written into it (name, /etc/hosts, network, apt proxy, the SSH key it accepts)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from hxp_runtime.lab.hostos import is_mounted, mount_overlay, run, write_file
from hxp_runtime.lab.spec import LabHost, LabSpec


def etc_hosts(spec: LabSpec) -> str:
    lines = [
        "# Written by hxp lab: there is no DNS on the lab bridge.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        *(f"{h.address}\t{h.name}" for h in spec.hosts),
    ]
    return "\n".join(lines) + "\n"


def network_unit(spec: LabSpec, host: LabHost) -> str:
    """systemd-networkd config for the guest side of the veth (host0): a static address.

    The default route points at the bridge so Ansible's default-IPv4 facts exist; the controller
    does not forward, so nothing leaves the lab. No IPv6, no DHCP: only the lab's own subnet.
    """
    return (
        "# Written by hxp lab.\n"
        "[Match]\nName=host0\n\n"
        "[Network]\n"
        f"Address={host.address}/{spec.network.prefixlen}\n"
        f"Gateway={spec.gateway.ip}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )


def apt_proxy_conf(spec: LabSpec) -> str:
    return (
        "# Written by hxp lab.\n"
        f'Acquire::http::Proxy "{spec.apt_proxy_url}";\n'
        "// HTTP pipelining through apt-cacher-ng can deadlock: an apt-get update once waited\n"
        "// over an hour with no socket open. One request per connection, and a stalled fetch\n"
        "// fails after 60 s instead of holding the run.\n"
        'Acquire::http::Pipeline-Depth "0";\n'
        'Acquire::http::Timeout "60";\n'
    )


def keygen_command(spec: LabSpec) -> list[str]:
    """ssh-keygen for the lab's key: ed25519, no passphrase, named after the lab."""
    comment = f"hxp-lab-{spec.name}"
    return ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(spec.key_file)]


def ensure_key(spec: LabSpec) -> None:
    """The SSH key every host of the lab accepts for root, generated once."""
    if not spec.key_file.exists():
        run(*keygen_command(spec))


@dataclass(frozen=True)
class GuestRoot:
    """A host's overlay in its directory: ``upper`` and ``work`` on disk, mounted at ``root``."""

    directory: Path

    @property
    def upper(self) -> Path:
        return self.directory / "upper"

    @property
    def work(self) -> Path:
        return self.directory / "work"

    @property
    def root(self) -> Path:
        return self.directory / "root"

    def prepare(self, spec: LabSpec, host: LabHost, rootfs: Path) -> Path:
        """Mount the overlay of ``rootfs`` (once) and write the host's files; return the root."""
        fresh = not self.upper.exists()
        for d in (self.upper, self.work, self.root):
            d.mkdir(parents=True, exist_ok=True)
        if not is_mounted(self.root):
            mount_overlay(rootfs, self.upper, self.work, self.root)
        write_guest_files(spec, host, self.root, fresh=fresh)
        return self.root


def write_guest_files(spec: LabSpec, host: LabHost, root: Path, *, fresh: bool) -> None:
    """Write the host's identity into ``root``; a ``fresh`` overlay also gets a machine-id."""
    etc = root / "etc"
    write_file(etc / "hostname", f"{host.name}\n")
    write_file(etc / "hosts", etc_hosts(spec))
    write_file(etc / "systemd/network/50-hxp-lab.network", network_unit(spec, host))
    write_file(etc / "apt/apt.conf.d/00hxp-lab-proxy", apt_proxy_conf(spec))
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    pub = spec.key_file.with_suffix(".pub").read_text()
    write_file(ssh / "authorized_keys", pub, 0o600)
    if fresh:
        write_file(etc / "machine-id", secrets.token_hex(16) + "\n", 0o444)
