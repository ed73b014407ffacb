"""What a lab is: its hosts, names and addresses, read from the hosts of an hxp.yml.

The lab reads only its part of the file (hosts, ``lab:``) with the schema's own models, adds its
rules (unique names and addresses on the bridge's subnet), and picks a free network when labs
run side by side.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hxp_runtime.config import (
    ConfigError,
    Host,
    LabSettings,
    Name,
    Problem,
    SecretScheme,
    _pydantic_problems,
)
from hxp_runtime.lab.errors import LabError
from hxp_runtime.yamlsource import YamlSourceError, load_yaml

AUTO_POOL = ipaddress.IPv4Network("10.77.0.0/16")
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
AUTO_BRIDGE_PREFIX = "hxpbr"
# systemd-nspawn's limit on a machine name.
MACHINE_NAME_MAX = 64


@dataclass(frozen=True)
class LabHost:
    name: str
    address: ipaddress.IPv4Address
    groups: tuple[str, ...]

    def machine(self, lab: str) -> str:
        """systemd-nspawn machine name; unique on the machine (it names the veth)."""
        return f"{lab}-{self.name}"


@dataclass(frozen=True)
class LabPair:
    """A server's certificate and key given as ``file:`` references (router.tls, database.tls,
    cache.tls): ``up`` issues them with the lab's CA for the host's name and ``addresses`` when
    the files do not exist (so switching TLS on is one config change)."""

    host: str
    addresses: tuple[ipaddress.IPv4Address, ...]
    certificate: Path
    key: Path


@dataclass(frozen=True)
class LabTls:
    """The pairs ``up`` issues, and the ``file:`` references of the CA the router verifies
    PostgreSQL and Redis with (database.tls.ca, cache.tls.ca): ``up`` writes the lab CA's
    certificate there."""

    pairs: tuple[LabPair, ...]
    ca_files: tuple[Path, ...] = ()

    @property
    def files(self) -> set[Path]:
        """Every file ``up`` writes from the CA (not random secrets)."""
        return {f for p in self.pairs for f in (p.certificate, p.key)} | set(self.ca_files)


@dataclass(frozen=True)
class LabSpec:
    """Everything needed to bring a lab up, derived from hxp.yml (see :func:`load_lab`)."""

    name: str
    bridge: str
    gateway: ipaddress.IPv4Interface
    state_dir: Path  # the lab's own directory (lab.state_dir/<name>), absolute
    apt_proxy_port: int
    hosts: tuple[LabHost, ...]
    secret_files: tuple[Path, ...] = ()
    tls: LabTls | None = None

    @property
    def ca_dir(self) -> Path:
        """The lab's CA: ca.crt (clients verify the router with it) and ca.key (0600)."""
        return self.state_dir / "ca"

    @property
    def network(self) -> ipaddress.IPv4Network:
        return self.gateway.network

    @property
    def apt_proxy_url(self) -> str:
        return f"http://{self.gateway.ip}:{self.apt_proxy_port}"

    @property
    def key_file(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def inventory_file(self) -> Path:
        return self.state_dir / "inventory.yml"

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise LabError(f"lab {self.name!r} has no host {name!r}; its hosts: {known}")

    def on_network(self, bridge: str, gateway: ipaddress.IPv4Interface) -> LabSpec:
        """The same lab on another bridge and subnet; hosts keep their host part."""
        return replace(
            self,
            bridge=bridge,
            gateway=gateway,
            hosts=tuple(
                replace(h, address=rebase(h.address, self.network, gateway.network))
                for h in self.hosts
            ),
        )


def rebase(
    address: ipaddress.IPv4Address, old: ipaddress.IPv4Network, new: ipaddress.IPv4Network
) -> ipaddress.IPv4Address:
    """``address`` moved from network ``old`` to ``new`` (same prefix length), host part kept."""
    if old.prefixlen != new.prefixlen:
        raise ValueError(f"cannot move {address} from {old} to {new}: prefix lengths differ")
    return new.network_address + (int(address) - int(old.network_address))


def free_network(
    used: Sequence[ipaddress.IPv4Network], bridges: set[str]
) -> tuple[str, ipaddress.IPv4Interface]:
    """First /24 of the pool (10.77.N.0/24, bridge hxpbrN, N >= 1) nobody uses."""
    for n, subnet in enumerate(AUTO_POOL.subnets(new_prefix=24)):
        bridge = f"{AUTO_BRIDGE_PREFIX}{n}"
        if n == 0 or bridge in bridges or any(subnet.overlaps(u) for u in used):
            continue  # N = 0 is the fixed network of inventory/lab/hxp.yml
        return bridge, ipaddress.IPv4Interface(f"{subnet.network_address + 1}/24")
    raise LabError(f"no free /24 left in {AUTO_POOL}; run `hxp lab down` on labs you no longer use")


# --------------------------------------------------------------------------- hxp.yml


class LabFile(BaseModel):
    """The parts of hxp.yml the lab reads, validated with the schema's own models.

    The rest of the deployment (models, router, data plane) is `hxp validate`'s business, not
    the lab's: a lab boots hosts, and a Molecule scenario's file describes hosts only.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: Name
    hosts: list[Host] = Field(min_length=1)
    lab: LabSettings = Field(default_factory=LabSettings)


def lab_problems(doc: LabFile) -> list[Problem]:
    """Rules the lab adds: unique names and addresses, every host on the bridge's subnet."""
    problems = _network_problems(doc)
    seen: dict[str, str] = {}
    for i, host in enumerate(doc.hosts):
        problems += _duplicate_problems(i, host, seen)
        problems += _address_problems(i, host, doc.lab)
        if host.ssh_user != "root" or host.ssh_port != 22:
            problems.append(
                Problem(("hosts", i), "lab hosts take SSH as root on port 22; drop ssh_user/port")
            )
    return problems


def _network_problems(doc: LabFile) -> list[Problem]:
    """Machine names that do not fit, a subnet too small for a lab."""
    network = doc.lab.gateway.network
    problems: list[Problem] = []
    if len(f"{doc.name}-") + max(len(h.name) for h in doc.hosts) > MACHINE_NAME_MAX:
        problems.append(
            Problem(
                ("name",),
                f"lab machine names (<name>-<host>) must fit {MACHINE_NAME_MAX} characters; "
                "shorten",
            )
        )
    if network.prefixlen > 29:
        problems.append(
            Problem(("lab", "gateway"), f"subnet {network} is too small for a lab; use a /24")
        )
    return problems


def _duplicate_problems(index: int, host: Host, seen: dict[str, str]) -> list[Problem]:
    """Host ``index``'s name or address already used by a host before it (recorded in ``seen``)."""
    problems = []
    for key, value in (("name", host.name), ("address", str(host.address))):
        if f"{key}:{value}" in seen:
            problems.append(
                Problem(
                    ("hosts", index, key),
                    f"{key} {value} is already used by {seen[f'{key}:{value}']}; "
                    "give each host its own",
                )
            )
        seen.setdefault(f"{key}:{value}", f"hosts[{index}]")
    return problems


def _address_problems(index: int, host: Host, lab: LabSettings) -> list[Problem]:
    """Host ``index``'s address is not a host address of the lab's subnet."""
    network = lab.gateway.network
    path = ("hosts", index, "address")
    addr = host.address
    if not isinstance(addr, ipaddress.IPv4Address) or addr not in network:
        return [
            Problem(
                path,
                f"lab host address {addr} is not in the lab subnet {network} "
                f"(lab.gateway {lab.gateway}); give an address inside it",
            )
        ]
    if addr in (network.network_address, network.broadcast_address, lab.gateway.ip):
        own = addr == lab.gateway.ip
        what = "the bridge's own address" if own else "not a host address"
        return [Problem(path, f"{addr} is {what}; give another address in {network}")]
    return []


def file_secrets(node: Any) -> set[Path]:
    """Every ``file:/absolute/path`` secret reference anywhere in the document."""
    if isinstance(node, str):
        scheme, _, value = node.partition(":")
        return (
            {Path(value)} if scheme == SecretScheme.FILE.value and value.startswith("/") else set()
        )
    if isinstance(node, dict):
        return set().union(*(file_secrets(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(file_secrets(v) for v in node))
    return set()


def _servers(node: dict[str, Any]) -> list[str]:
    """router.hosts, when given as a list of names (hxp validate checks the rest)."""
    hosts = node.get("hosts")
    return [h for h in hosts if isinstance(h, str)] if isinstance(hosts, list) else []


def _virtual_address(node: dict[str, Any]) -> tuple[ipaddress.IPv4Address, ...]:
    vip = node.get("virtual_address")
    try:
        return (ipaddress.IPv4Address(vip["address"]),) if isinstance(vip, dict) else ()
    except (KeyError, ValueError):
        return ()  # hxp validate names the field


def lab_tls(data: dict[str, Any], hosts: Sequence[Host]) -> LabTls | None:
    """The TLS files of the document ``up`` makes from the lab's CA: router.tls, database.tls
    and cache.tls given as ``file:`` references whose server host is known (named, or the only
    host of its group); None when there are none."""
    addresses = {h.name: ipaddress.IPv4Address(h.address) for h in hosts}
    pairs, ca_files = [], set()
    # Redis may listen on loopback (on the router's host): its certificate covers 127.0.0.1.
    for section, group, loopback in (
        ("router", "llm", False),
        ("database", "database", False),
        ("cache", "cache", True),
    ):
        node = data.get(section)
        tls = node.get("tls") if isinstance(node, dict) else None
        if not isinstance(node, dict) or not isinstance(tls, dict):
            continue
        members = [h.name for h in hosts if group in h.groups]
        host = node.get("host") or (members[0] if len(members) == 1 else None)
        servers = _servers(node) or ([host] if isinstance(host, str) else [])
        certificate, key = file_secrets(tls.get("certificate")), file_secrets(tls.get("key"))
        ca_files |= file_secrets(tls.get("ca"))
        if (
            len(certificate) != 1
            or len(key) != 1
            or not servers
            or not set(servers) <= set(addresses)
        ):
            continue
        extra = (LOOPBACK,) if loopback else ()
        # Routers behind a virtual address share one pair: it covers each host and the address.
        covered = (*(addresses[s] for s in servers), *_virtual_address(node), *extra)
        pairs.append(LabPair(servers[0], covered, certificate.pop(), key.pop()))
    if not pairs and not ca_files:
        return None
    return LabTls(tuple(pairs), tuple(sorted(ca_files)))


def load_lab(file: Path) -> LabSpec:
    """The lab described by ``file``; raises ConfigError naming file, line, field and the fix."""
    try:
        data, lines = load_yaml(file)
    except YamlSourceError as exc:
        raise ConfigError(file, [Problem((), exc.message, exc.line)]) from None
    if not isinstance(data, dict):
        raise ConfigError(file, [Problem((), "the file must be a mapping (name, hosts, lab)", 1)])
    try:
        doc = LabFile.model_validate(data)
    except ValidationError as exc:
        # The schema's own translation: field paths without union noise, one line per field.
        raise ConfigError(file, _pydantic_problems(exc, lines, LabFile)) from None
    problems = lab_problems(doc)
    if problems:
        raise ConfigError(file, [replace(p, line=lines.line_of(p.path)) for p in problems])
    tls = lab_tls(data, doc.hosts)
    issued = tls.files if tls else set()  # a CA's, not random
    state_root = doc.lab.state_dir
    if not state_root.is_absolute():
        state_root = file.parent / state_root
    return LabSpec(
        name=doc.name,
        bridge=doc.lab.bridge,
        gateway=doc.lab.gateway,
        state_dir=(state_root / doc.name).resolve(),
        apt_proxy_port=doc.lab.apt_proxy_port,
        hosts=tuple(
            LabHost(h.name, ipaddress.IPv4Address(h.address), tuple(g.value for g in h.groups))
            for h in doc.hosts
        ),
        secret_files=tuple(sorted(file_secrets(data) - issued)),
        tls=tls,
    )
