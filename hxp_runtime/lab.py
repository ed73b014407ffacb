"""The lab: real systemd hosts on one machine, one systemd-nspawn machine per host of hxp.yml.

Every host boots a copy-on-write overlay of one cached Debian rootfs (built once with
debootstrap, kept as a tar.zst) with systemd as PID 1, on a bridge with a static address,
reachable over SSH with a key generated for the lab. apt inside the hosts goes through an
apt-cacher-ng bound to the bridge address. ``up`` writes an Ansible inventory for the hosts.

Several labs run side by side: each has its own name (the deployment name), bridge, subnet,
cgroups and state directory. Everything ``up`` creates is recorded in ``state.json`` before it
is created, so ``down`` removes exactly that (processes, mounts, bridge, cgroups, the files
it wrote) and nothing else, even after an ``up`` that failed half-way.

Layout (``STATE`` = ``lab.state_dir``/<name>, ``CACHE`` = /var/cache/hxp-lab):

    CACHE/base-<key>.tar.zst      the base rootfs archive; CACHE/rootfs-<key>/ its extraction
    CACHE/apt/                    apt-cacher-ng cache shared by all labs (see AptProxy)
    STATE/state.json              what ``up`` created
    STATE/id_ed25519[.pub]        the SSH key the hosts accept for root
    STATE/inventory.yml           Ansible inventory of the hosts
    STATE/hosts/<host>/           overlay upper/work/root, console.log, supervisor.pid
    /sys/fs/cgroup/{unified,systemd}/hxp-lab/<name>/<host>   each host's own cgroups
    /run/hxp-lab/<name>.json      which state directory owns the lab name on this machine
    /run/hxp-lab/<name>.acng      apt-cacher-ng's control socket (a short path: sockets have
                                  a 108-byte limit, state directories can be deep)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
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
from hxp_runtime.yamlsource import YamlSourceError, load_yaml

DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "openssh-server",
    "iproute2",
    "sudo",
    "ca-certificates",
    "apt-transport-https",
)
# Bump when the base image customisation changes, so cached images are rebuilt.
BASE_FORMAT = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
REBOOT_EXIT_CODE = 133  # systemd-nspawn's exit status when the guest asked for a reboot
AUTO_POOL = ipaddress.IPv4Network("10.77.0.0/16")
AUTO_BRIDGE_PREFIX = "hxpbr"
SSH_OPTIONS = (
    "-o UserKnownHostsFile=/dev/null",  # every host has the base image's host keys
    "-o StrictHostKeyChecking=no",
    "-o LogLevel=ERROR",
    "-o IdentitiesOnly=yes",
)
BOOT_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
CGROUP_PARENT = "hxp-lab"
RUN_DIR = Path("/run/hxp-lab")
RUN_ENV = "HXP_LAB_RUN"
PROXY_PASSTHROUGH = r"^(pypi\.org|files\.pythonhosted\.org):443$"


Log = Callable[[str], None]


class LabError(Exception):
    """The lab cannot do what was asked; the message says why and what to do."""


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class LabHost:
    name: str
    address: ipaddress.IPv4Address
    groups: tuple[str, ...]

    def machine(self, lab: str) -> str:
        """systemd-nspawn machine name; unique on the machine (it names the veth)."""
        return f"{lab}-{self.name}"


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
    network = doc.lab.gateway.network
    problems: list[Problem] = []
    if len(f"{doc.name}-") + max(len(h.name) for h in doc.hosts) > 64:
        problems.append(
            Problem(("name",), "lab machine names (<name>-<host>) must fit 64 characters; shorten")
        )
    if network.prefixlen > 29:
        problems.append(
            Problem(("lab", "gateway"), f"subnet {network} is too small for a lab; use a /24")
        )
    seen: dict[str, str] = {}
    for i, host in enumerate(doc.hosts):
        for key, value in (("name", host.name), ("address", str(host.address))):
            if f"{key}:{value}" in seen:
                problems.append(
                    Problem(
                        ("hosts", i, key),
                        f"{key} {value} is already used by {seen[f'{key}:{value}']}; "
                        "give each host its own",
                    )
                )
            seen.setdefault(f"{key}:{value}", f"hosts[{i}]")
        path = ("hosts", i, "address")
        addr = host.address
        if not isinstance(addr, ipaddress.IPv4Address) or addr not in network:
            problems.append(
                Problem(
                    path,
                    f"lab host address {addr} is not in the lab subnet {network} "
                    f"(lab.gateway {doc.lab.gateway}); give an address inside it",
                )
            )
        elif addr in (network.network_address, network.broadcast_address, doc.lab.gateway.ip):
            own = addr == doc.lab.gateway.ip
            what = "the bridge's own address" if own else "not a host address"
            problems.append(Problem(path, f"{addr} is {what}; give another address in {network}"))
        if host.ssh_user != "root" or host.ssh_port != 22:
            problems.append(
                Problem(("hosts", i), "lab hosts take SSH as root on port 22; drop ssh_user/port")
            )
    return problems


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
        secret_files=tuple(sorted(file_secrets(data))),
    )


# --------------------------------------------------------------------------- pure renderers


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
    return f'# Written by hxp lab.\nAcquire::http::Proxy "{spec.apt_proxy_url}";\n'


def acng_conf(spec: LabSpec, cache: Path, run: Path, socket: Path) -> str:
    """apt-cacher-ng for one lab: bound to the bridge address only, no Remap rules (requests go to
    the mirror the guests name, which is the controller's own mirror)."""
    return (
        "# Written by hxp lab.\n"
        f"CacheDir: {cache}\n"
        f"LogDir: {run}\n"
        "SupportDir: /usr/lib/apt-cacher-ng\n"
        f"BindAddress: {spec.gateway.ip}\n"
        f"Port: {spec.apt_proxy_port}\n"
        f"PidFile: {run}/apt-cacher-ng.pid\n"
        f"SocketPath: {socket}\n"
        "ForeGround: 1\n"
        f"PassThroughPattern: {PROXY_PASSTHROUGH}\n"
        "ReportPage: acng-report.html\n"
    )


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


def ansible_inventory(spec: LabSpec) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}
    for host in spec.hosts:
        for group in host.groups:
            groups.setdefault(group, {"hosts": {}})["hosts"][host.name] = {}
    return {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(spec.key_file),
                "ansible_ssh_common_args": " ".join(SSH_OPTIONS),
                "ansible_ssh_pipelining": True,
                "ansible_python_interpreter": "/usr/bin/python3",
                "hxp_lab_gateway": str(spec.gateway.ip),
                "hxp_common_apt_proxy": spec.apt_proxy_url,
            },
            "hosts": {h.name: {"ansible_host": str(h.address)} for h in spec.hosts},
            "children": dict(sorted(groups.items())),
        }
    }


def controller_mirror(sources: dict[str, str]) -> str:
    """The Debian mirror the controller's apt uses (``sources`` maps file name to its text)."""
    for name, text in sorted(sources.items()):
        if name.endswith(".sources"):
            for stanza in text.split("\n\n"):
                fields = dict(
                    line.split(":", 1)
                    for line in stanza.splitlines()
                    if ":" in line and not line.startswith(("#", " "))
                )
                suites = fields.get("Suites", "").split()
                if DEBIAN_SUITE in suites and "URIs" in fields:
                    return fields["URIs"].split()[0].strip().rstrip("/")
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb" and DEBIAN_SUITE in parts:
                    uri = next(p for p in parts[1:] if "://" in p)
                    return uri.rstrip("/")
    return DEFAULT_MIRROR


def read_controller_mirror() -> str:
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    return controller_mirror(
        {f.name: f.read_text() for f in files if f.is_file() and f.suffix in {".list", ".sources"}}
    )


def base_image_key(mirror: str, ca_files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([BASE_FORMAT, DEBIAN_SUITE, BASE_PACKAGES, mirror]).encode())
    for name, content in sorted(ca_files.items()):
        digest.update(name.encode() + b"\0" + content)
    return digest.hexdigest()[:12]


def mounts_under(mountinfo: str, root: Path) -> list[Path]:
    """Mount points at or below ``root`` in /proc/self/mountinfo text, deepest first."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = Path(_unescape_mount(fields[4]))
        if point == root or root in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unescape_mount(text: str) -> str:
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


# --------------------------------------------------------------------------- recorded state


@dataclass
class LabState:
    """What ``up`` created, written before each thing is created (so ``down`` can undo it)."""

    name: str
    bridge: str
    gateway: str
    apt_proxy_port: int
    hosts: list[dict[str, Any]]
    base_rootfs: str = ""
    created_bridge: bool = False
    created_secret_files: list[str] = field(default_factory=list)
    created_dirs: list[str] = field(default_factory=list)
    # $HXP_LAB_RUN of the `up` that created the lab: scripts/test removes its own labs by it.
    run: str = ""

    @classmethod
    def of(cls, spec: LabSpec) -> LabState:
        return cls(
            name=spec.name,
            bridge=spec.bridge,
            gateway=str(spec.gateway),
            apt_proxy_port=spec.apt_proxy_port,
            hosts=[
                {"name": h.name, "address": str(h.address), "groups": list(h.groups)}
                for h in spec.hosts
            ],
        )

    def spec(self, state_dir: Path) -> LabSpec:
        return LabSpec(
            name=self.name,
            bridge=self.bridge,
            gateway=ipaddress.IPv4Interface(self.gateway),
            state_dir=state_dir,
            apt_proxy_port=self.apt_proxy_port,
            hosts=tuple(
                LabHost(h["name"], ipaddress.IPv4Address(h["address"]), tuple(h["groups"]))
                for h in self.hosts
            ),
        )


def _state_file(state_dir: Path) -> Path:
    return state_dir / "state.json"


def load_state(state_dir: Path) -> LabState | None:
    path = _state_file(state_dir)
    if not path.exists():
        return None
    try:
        return LabState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise LabError(f"{path}: unreadable lab state ({exc}); remove the lab by hand") from None


def save_state(state_dir: Path, state: LabState) -> None:
    _write_file(_state_file(state_dir), json.dumps(asdict(state), indent=2) + "\n", 0o600)


# --------------------------------------------------------------------------- host helpers


def _run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(a) for a in args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise LabError(f"`{' '.join(argv)}` failed (exit {result.returncode}): {detail}")
    return result


def _write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write atomically (temp file + rename) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as stream:
        stream.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _pid_alive(pid: int, marker: str) -> bool:
    """``pid`` runs and its command line holds ``marker`` (guards against a recycled pid)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def _is_mounted(path: Path) -> bool:
    return path in mounts_under(_mountinfo(), path)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _used_networks() -> tuple[list[ipaddress.IPv4Network], set[str]]:
    data = json.loads(_run("ip", "-j", "-4", "addr", "show").stdout or "[]")
    networks = [
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network
        for link in data
        for a in link.get("addr_info", [])
    ]
    return networks, set(os.listdir("/sys/class/net"))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Machine-wide lock: base image builds, network allocation, cache merges."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- cgroups


def cgroup_hierarchies(root: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """Where each host gets its own cgroup: the unified and the name=systemd hierarchy.

    On a hybrid layout (cgroup v1 controllers + unified) systemd inside the guest needs its own
    cgroup in both, or restarting a service fails with "Failed to attach ... compat systemd
    cgroup". On a pure cgroup v2 machine the root is the unified hierarchy.
    """
    if (root / "cgroup.controllers").exists():
        return [root]
    return [root / name for name in ("unified", "systemd") if (root / name).is_dir()]


def cgroup_dirs(lab: str, unit: str) -> list[Path]:
    return [h / CGROUP_PARENT / lab / unit for h in cgroup_hierarchies()]


def _cgroup_pids(directory: Path) -> set[int]:
    pids: set[int] = set()
    if directory.is_dir():
        for procs in directory.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _kill_cgroups(dirs: Sequence[Path]) -> None:
    """SIGKILL every process left in ``dirs`` (and below), then remove the cgroups."""
    for _ in range(50):
        pids = set().union(*(_cgroup_pids(d) for d in dirs))
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for directory in dirs:
        _remove_cgroup_tree(directory)


def _remove_cgroup_tree(directory: Path) -> None:
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


def _remove_empty_parents(directory: Path, stop: Path) -> None:
    """rmdir ``directory`` and its parents up to (not including) ``stop`` while they are empty."""
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _join_cgroups(dirs: Sequence[Path]) -> None:
    for directory in dirs:
        (directory / "cgroup.procs").write_text(str(os.getpid()))


# --------------------------------------------------------------------------- base image


@dataclass(frozen=True)
class BaseImage:
    """The cached Debian rootfs every lab host overlays; its key covers what goes into it."""

    cache_dir: Path
    mirror: str
    ca_files: dict[str, bytes]

    @classmethod
    def default(cls) -> BaseImage:
        """In $HXP_LAB_CACHE (default /var/cache/hxp-lab), from the controller's own mirror."""
        ca_files = {}
        if EXTRA_CA_DIR.is_dir():
            ca_files = {p.name: p.read_bytes() for p in sorted(EXTRA_CA_DIR.glob("*.crt"))}
        return cls(
            Path(os.environ.get("HXP_LAB_CACHE", "/var/cache/hxp-lab")),
            read_controller_mirror(),
            ca_files,
        )

    @property
    def key(self) -> str:
        return base_image_key(self.mirror, self.ca_files)

    @property
    def archive(self) -> Path:
        return self.cache_dir / f"base-{self.key}.tar.zst"

    @property
    def rootfs(self) -> Path:
        return self.cache_dir / f"rootfs-{self.key}"

    @property
    def lock(self) -> Path:
        return self.cache_dir / "lock"

    def ensure(self, log: Log = print) -> Path:
        """The extracted base rootfs; built (debootstrap) or extracted from the archive once."""
        rootfs = self.rootfs
        if rootfs.is_dir():
            return rootfs
        with _locked(self.lock):
            if rootfs.is_dir():  # another lab built it while this one waited
                return rootfs
            tmp = rootfs.with_name(rootfs.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if self.archive.exists():
                log(f"extracting the base image {self.archive}")
                tmp.mkdir(parents=True)
                _run("tar", "--numeric-owner", "-I", "zstd", "-xpf", self.archive, "-C", tmp)
            else:
                log(f"building the base image with debootstrap from {self.mirror} (about a minute)")
                self._build(tmp)
                partial = self.archive.with_name(self.archive.name + ".tmp")
                _run(
                    "tar",
                    "--numeric-owner",
                    "-I",
                    "zstd -T0 -3",
                    "-cpf",
                    str(partial),
                    "-C",
                    tmp,
                    ".",
                )
                partial.replace(self.archive)
            tmp.replace(rootfs)
        return rootfs

    def _build(self, root: Path) -> None:
        root.parent.mkdir(parents=True, exist_ok=True)
        result = _run(
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            DEBIAN_SUITE,
            str(root),
            self.mirror,
            check=False,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise LabError(f"debootstrap failed (exit {result.returncode}):\n{tail}")
        # The controller's extra CA certificates, so HTTPS through the proxy verifies in guests.
        for name, content in self.ca_files.items():
            target = root / EXTRA_CA_DIR.relative_to("/") / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        _run("chroot", str(root), "update-ca-certificates")
        _run("chroot", str(root), "systemctl", "enable", "systemd-networkd")
        # Per-host values are written into each overlay; the image carries none of its own.
        (root / "etc/machine-id").write_text("")
        (root / "etc/hostname").write_text("localhost\n")
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        (root / "etc/resolv.conf").write_text("# No DNS in the hxp lab: names are in /etc/hosts.\n")
        _run("chroot", str(root), "apt-get", "clean")
        lists = root / "var/lib/apt/lists"
        for entry in lists.iterdir():
            if entry.is_file():
                entry.unlink()
        (root / "var/lib/apt/periodic/update-success-stamp").unlink(missing_ok=True)
        # Empty lists dated 1970: Ansible's apt cache_valid_time then always updates first.
        os.utime(lists, (0, 0))


# --------------------------------------------------------------------------- apt proxy


@dataclass(frozen=True)
class AptProxy:
    """The lab's apt-cacher-ng, in the lab's cgroup, bound to the bridge address.

    Its cache is an overlay: lower = the cache shared by all labs (read-only while labs run),
    upper = this lab's. ``stop`` copies what this lab downloaded into the shared cache under the
    machine-wide lock, so labs never write one cache concurrently yet later labs start warm.
    """

    spec: LabSpec
    shared_cache: Path
    lock: Path

    @property
    def directory(self) -> Path:
        return self.spec.state_dir / "apt-proxy"

    @property
    def mountpoint(self) -> Path:
        return self.directory / "cache"

    @property
    def pid_file(self) -> Path:
        return self.directory / "run/apt-cacher-ng.pid"

    @property
    def socket(self) -> Path:
        return RUN_DIR / f"{self.spec.name}.acng"

    @property
    def cgroups(self) -> list[Path]:
        return cgroup_dirs(self.spec.name, "apt-proxy")

    def running(self) -> bool:
        pid = _read_pid(self.pid_file)
        return pid is not None and _pid_alive(pid, str(self.directory))

    def start(self) -> None:
        if self.running():
            return
        self.shared_cache.mkdir(parents=True, exist_ok=True)
        upper, work, run = self.directory / "upper", self.directory / "work", self.directory / "run"
        for d in (upper, work, run, self.mountpoint):
            d.mkdir(parents=True, exist_ok=True)
        if not _is_mounted(self.mountpoint):
            _mount_overlay(self.shared_cache, upper, work, self.mountpoint)
        conf = self.directory / "conf"
        _write_file(conf / "acng.conf", acng_conf(self.spec, self.mountpoint, run, self.socket))
        for directory in self.cgroups:
            directory.mkdir(parents=True, exist_ok=True)
        log = (run / "apt-cacher-ng.out").open("ab")
        proc = subprocess.Popen(
            ["apt-cacher-ng", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: _join_cgroups(self.cgroups),  # noqa: PLW1509 - no threads here
        )
        log.close()
        _write_file(self.pid_file, f"{proc.pid}\n")
        deadline = time.monotonic() + 10
        while not _port_open(str(self.spec.gateway.ip), self.spec.apt_proxy_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                logs = [run / "apt-cacher-ng.out", run / "apt-cacher.err"]
                tail = "".join(p.read_text(errors="replace")[-800:] for p in logs if p.exists())
                raise LabError(
                    f"apt-cacher-ng did not start on {self.spec.apt_proxy_url} (logs in {run}):\n"
                    + tail
                )
            time.sleep(0.05)

    def terminate(self) -> int | None:
        """Ask apt-cacher-ng to exit (it takes a moment); return its pid, None if not running."""
        pid = _read_pid(self.pid_file)
        if pid is None or not _pid_alive(pid, str(self.directory)):
            return None
        os.kill(pid, signal.SIGTERM)
        return pid

    def stop(self, pid: int | None) -> None:
        """Wait for ``pid`` (from :meth:`terminate`), then remove the cgroup and the mount."""
        if pid is not None:
            _wait_gone(pid, STOP_TIMEOUT_S)
        _kill_cgroups(self.cgroups)
        self.socket.unlink(missing_ok=True)
        if _is_mounted(self.mountpoint):
            _run("umount", str(self.mountpoint))
        upper = self.directory / "upper"
        if upper.is_dir():
            with _locked(self.lock):
                merge_tree(upper, self.shared_cache)


def merge_tree(source: Path, target: Path) -> int:
    """Copy the regular files of ``source`` (an overlay upper dir) into ``target``.

    Each file is replaced atomically; overlay whiteouts (character devices) and anything else
    that is not a regular file are skipped: the shared cache only ever grows. Returns the number
    of files copied.
    """
    copied = 0
    for directory, _, files in os.walk(source):
        rel = Path(directory).relative_to(source)
        for name in files:
            src = Path(directory, name)
            if not src.is_file() or src.is_symlink():
                continue
            dst = target / rel / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{name}.hxp-merge")
            shutil.copy2(src, tmp)
            tmp.replace(dst)
            copied += 1
    return copied


def _mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    _run(
        "mount",
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={lower},upperdir={upper},workdir={work}",
        str(target),
    )


def _port_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _ignore_vanished(
    function: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]
) -> None:
    """rmtree error handler: a file another cleanup removed first is gone, which is the goal."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def _wait_gone(pid: int, timeout: float) -> bool:
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


# --------------------------------------------------------------------------- the lab


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    running: bool
    system_state: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Lab:
    """Operations on one lab. ``spec`` is what the config asks for; the recorded state wins
    where they may differ (an auto-allocated network)."""

    def __init__(self, spec: LabSpec, image: BaseImage, log: Log = print) -> None:
        self.spec = spec
        self.image = image
        self.log = log
        self.registry = RUN_DIR

    @classmethod
    def recorded(cls, state_dir: Path, image: BaseImage, log: Log = print) -> Lab:
        """The lab whose state is in ``state_dir`` (for removing it without its config)."""
        state = load_state(state_dir)
        if state is None:
            raise LabError(f"no lab state in {state_dir}")
        return cls(state.spec(state_dir), image, log)

    # ------------------------------------------------------------------ paths

    def host_dir(self, host: LabHost) -> Path:
        return self.spec.state_dir / "hosts" / host.name

    def _supervisor_marker(self, host: LabHost) -> str:
        return f"--machine={host.machine(self.spec.name)}"

    def _registry_file(self) -> Path:
        return self.registry / f"{self.spec.name}.json"

    def _proxy(self) -> AptProxy:
        return AptProxy(self.spec, self.image.cache_dir / "apt", self.image.lock)

    # ------------------------------------------------------------------ up

    def up(self, *, auto_network: bool = False) -> LabSpec:
        """Bring every host up (idempotent); return the spec as running (final addresses)."""
        rootfs = self.image.ensure(self.log)
        self._remove_stale_namesake()
        with _locked(self.image.lock):
            state = self._claim(auto_network)
        state.base_rootfs = str(rootfs)
        save_state(self.spec.state_dir, state)
        self._ensure_bridge(state)
        self._ensure_secret_files(state)
        self._ensure_key()
        self._proxy().start()
        started = {h.name: self._ensure_host(h, rootfs) for h in self.spec.hosts}
        self._wait_ready(started)
        _write_file(
            self.spec.inventory_file,
            f"# Written by `hxp lab up` for lab {self.spec.name}.\n"
            + yaml.safe_dump(ansible_inventory(self.spec), sort_keys=False),
        )
        return self.spec

    def _claim(self, auto_network: bool) -> LabState:
        """Take the lab name and network on this machine (under the machine-wide lock)."""
        state = load_state(self.spec.state_dir)
        if state is not None:
            recorded = state.spec(self.spec.state_dir)
            wanted = self.spec
            if auto_network:
                wanted = wanted.on_network(recorded.bridge, recorded.gateway)
            if (wanted.bridge, wanted.gateway, wanted.hosts) != (
                recorded.bridge,
                recorded.gateway,
                recorded.hosts,
            ):
                raise LabError(
                    f"lab {self.spec.name!r} is up with other hosts or network than the config "
                    f"now says; run `hxp lab down` on it first (state: {self.spec.state_dir})"
                )
            self.spec = replace(recorded, secret_files=self.spec.secret_files)
            self._register(state)
            return state
        owner = self._registry_owner()
        if owner is not None and owner != self.spec.state_dir and load_state(owner) is not None:
            raise LabError(
                f"a lab named {self.spec.name!r} is already up from {owner}; change `name` in the "
                "config or run `hxp lab down` with that lab's config"
            )
        used, links = _used_networks()
        if auto_network:
            bridge, gateway = free_network(used, links)
            self.spec = self.spec.on_network(bridge, gateway)
        elif self.spec.bridge in links:
            raise LabError(
                f"network interface {self.spec.bridge!r} already exists and is not this lab's; "
                "set lab.bridge to another name (or run `hxp lab down` for the lab that owns it)"
            )
        else:
            clash = [u for u in used if u.overlaps(self.spec.network)]
            if clash:
                raise LabError(
                    f"lab subnet {self.spec.network} overlaps {clash[0]}, already on this "
                    "machine; choose another lab.gateway subnet"
                )
        state = LabState.of(self.spec)
        state.run = os.environ.get(RUN_ENV, "")
        missing = [p for p in self.spec.state_dir.parents if not p.exists()]
        state.created_dirs.extend(str(d) for d in reversed(missing))
        self.spec.state_dir.mkdir(parents=True, exist_ok=True)
        save_state(self.spec.state_dir, state)
        self._register(state)
        # Claim the network now, still under the lock, so a concurrent `up` sees it taken.
        self._ensure_bridge(state)
        return state

    def _remove_stale_namesake(self) -> None:
        """Remove a lab of this name from another directory when none of its hosts runs any
        more (its processes ended with whatever started them), so this one can take the name.
        A namesake with a running host is left alone: `_claim` refuses with its reason."""
        owner = self._registry_owner()
        if owner is None or owner == self.spec.state_dir or load_state(owner) is None:
            return
        other = Lab.recorded(owner, self.image, self.log)
        if any(other._supervisor_pid(h) is not None for h in other.spec.hosts):
            return
        self.log(f"lab {self.spec.name!r} of {owner} has no running host left: removing it")
        other.down()

    def _registry_owner(self) -> Path | None:
        try:
            return Path(json.loads(self._registry_file().read_text())["state_dir"])
        except (OSError, ValueError, KeyError):
            return None

    def _register(self, state: LabState) -> None:
        entry = {"state_dir": str(self.spec.state_dir), "run": state.run}
        _write_file(self._registry_file(), json.dumps(entry) + "\n")

    def _ensure_bridge(self, state: LabState) -> None:
        bridge = self.spec.bridge
        if not _link_exists(bridge):
            state.created_bridge = True
            save_state(self.spec.state_dir, state)
            _run("ip", "link", "add", bridge, "type", "bridge")
        # Whatever the controller's ip_forward, nothing arriving from the lab is routed on: the
        # hosts reach the bridge address (apt proxy, SSH from here) and each other, no further.
        Path(f"/proc/sys/net/ipv4/conf/{bridge}/forwarding").write_text("0\n")
        addresses = _run("ip", "-4", "-o", "addr", "show", "dev", bridge).stdout
        if str(self.spec.gateway) not in addresses:
            _run("ip", "addr", "add", str(self.spec.gateway), "dev", bridge)
        _run("ip", "link", "set", bridge, "up")

    def _ensure_secret_files(self, state: LabState) -> None:
        """Create each missing ``file:`` secret of the config: random, 0600, in a 0700 dir."""
        for path in self.spec.secret_files:
            if path.exists():
                continue
            missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
            state.created_dirs.extend(str(d) for d in reversed(missing))
            state.created_secret_files.append(str(path))
            save_state(self.spec.state_dir, state)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_file(path, secrets.token_urlsafe(32), 0o600)

    def _ensure_key(self) -> None:
        if not self.spec.key_file.exists():
            _run(
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"hxp-lab-{self.spec.name}",
                "-f",
                str(self.spec.key_file),
            )

    def _ensure_host(self, host: LabHost, rootfs: Path) -> subprocess.Popen[bytes] | None:
        """Start the host's supervisor unless it runs; return the process started, if any."""
        if self._supervisor_pid(host) is not None:
            return None
        directory = self.host_dir(host)
        upper, work, root = directory / "upper", directory / "work", directory / "root"
        fresh = not upper.exists()
        for d in (upper, work, root):
            d.mkdir(parents=True, exist_ok=True)
        if not _is_mounted(root):
            _mount_overlay(rootfs, upper, work, root)
        self._write_guest_files(host, root, fresh=fresh)
        for d in cgroup_dirs(self.spec.name, host.name):
            d.mkdir(parents=True, exist_ok=True)
        log = (directory / "console.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hxp_runtime.lab",
                "supervise",
                self._supervisor_marker(host),
                f"--lab={self.spec.name}",
                f"--host={host.name}",
                "--",
                *nspawn_command(self.spec, host, root),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # detached: the lab outlives this command
        )
        log.close()
        _write_file(directory / "supervisor.pid", f"{proc.pid}\n")
        return proc

    def _write_guest_files(self, host: LabHost, root: Path, *, fresh: bool) -> None:
        etc = root / "etc"
        _write_file(etc / "hostname", f"{host.name}\n")
        _write_file(etc / "hosts", etc_hosts(self.spec))
        _write_file(etc / "systemd/network/50-hxp-lab.network", network_unit(self.spec, host))
        _write_file(etc / "apt/apt.conf.d/00hxp-lab-proxy", apt_proxy_conf(self.spec))
        ssh = root / "root/.ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        pub = self.spec.key_file.with_suffix(".pub").read_text()
        _write_file(ssh / "authorized_keys", pub, 0o600)
        if fresh:
            _write_file(etc / "machine-id", secrets.token_hex(16) + "\n", 0o444)

    def _supervisor_pid(self, host: LabHost) -> int | None:
        pid = _read_pid(self.host_dir(host) / "supervisor.pid")
        if pid is not None and _pid_alive(pid, self._supervisor_marker(host)):
            return pid
        return None

    def _wait_ready(self, started: dict[str, subprocess.Popen[bytes] | None]) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        pending = list(self.spec.hosts)
        while pending:
            for host in list(pending):
                proc = started.get(host.name)
                # A supervisor just started may not have exec'd yet: ask the Popen, not /proc.
                stopped = proc.poll() is not None if proc else self._supervisor_pid(host) is None
                if stopped:
                    raise LabError(
                        f"host {host.name} stopped while booting; {self._log_tail(host)}"
                    )
                state = self._system_state(host)
                if state in {"running", "degraded"} and _port_open(str(host.address), 22):
                    pending.remove(host)
            if pending and time.monotonic() > deadline:
                names = ", ".join(h.name for h in pending)
                raise LabError(
                    f"hosts {names} did not finish booting in {BOOT_TIMEOUT_S:.0f}s; "
                    f"{self._log_tail(pending[0])}"
                )
            if pending:
                time.sleep(0.1)

    def _log_tail(self, host: LabHost) -> str:
        path = self.host_dir(host) / "console.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            tail = []
        return f"last lines of {path}:\n" + "\n".join(tail)

    def _guest_init_pid(self, host: LabHost) -> int | None:
        """The host-side pid of the guest's PID 1 (the child of its systemd-nspawn)."""
        supervisor = self._supervisor_pid(host)
        nspawn = _children(supervisor)[:1] if supervisor is not None else []
        init = _children(nspawn[0])[:1] if nspawn else []
        return init[0] if init else None

    def _system_state(self, host: LabHost) -> str:
        pid = self._guest_init_pid(host)
        if pid is None:
            return "stopped"
        result = _run(
            "nsenter",
            f"--target={pid}",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--pid",
            "systemctl",
            "is-system-running",
            check=False,
        )
        return result.stdout.strip() or "starting"

    # ------------------------------------------------------------------ status

    def status(self) -> list[HostStatus] | None:
        """Each host's state, or None when the lab is not up."""
        state = load_state(self.spec.state_dir)
        if state is None:
            return None
        self.spec = replace(state.spec(self.spec.state_dir), secret_files=self.spec.secret_files)
        return [
            HostStatus(
                h.name,
                str(h.address),
                self._supervisor_pid(h) is not None,
                self._system_state(h),
            )
            for h in self.spec.hosts
        ]

    # ------------------------------------------------------------------ down

    def down(self) -> bool:
        """Remove everything ``up`` recorded; False when there was no lab to remove."""
        state = load_state(self.spec.state_dir)
        if state is None:
            return False
        self.spec = state.spec(self.spec.state_dir)
        # Signal everything first: guests power off and the proxy exits in parallel (~2 s each).
        supervisors = {h.name: self._supervisor_pid(h) for h in self.spec.hosts}
        for pid in supervisors.values():
            if pid is not None:
                # The supervisor passes SIGTERM on to systemd-nspawn, which powers the guest off.
                os.kill(pid, signal.SIGTERM)
        proxy = self._proxy()
        proxy_pid = proxy.terminate()
        for host in self.spec.hosts:
            self._stop_host(host, supervisors[host.name])
        proxy.stop(proxy_pid)
        lab_cgroups = [h / CGROUP_PARENT / self.spec.name for h in cgroup_hierarchies()]
        _kill_cgroups(lab_cgroups)
        for directory in lab_cgroups:
            _remove_empty_parents(directory.parent, directory.parent.parent)
        if state.created_bridge and _link_exists(self.spec.bridge):
            _run("ip", "link", "delete", self.spec.bridge, "type", "bridge")
        for path in state.created_secret_files:
            Path(path).unlink(missing_ok=True)
        leftovers = mounts_under(_mountinfo(), self.spec.state_dir)
        if leftovers:
            raise LabError(f"still mounted, not removing {self.spec.state_dir}: {leftovers[0]}")
        if self._registry_owner() == self.spec.state_dir:
            self._registry_file().unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.registry.rmdir()
        shutil.rmtree(self.spec.state_dir, onerror=_ignore_vanished)
        for created in reversed(state.created_dirs):  # only if empty: others may use them now
            with contextlib.suppress(OSError):
                Path(created).rmdir()
        return True

    def _stop_host(self, host: LabHost, pid: int | None) -> None:
        """Wait for the signalled supervisor ``pid``, then clear the cgroups and the mount."""
        if pid is not None and not _wait_gone(pid, STOP_TIMEOUT_S):
            self.log(f"host {host.name} did not power off in {STOP_TIMEOUT_S:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _kill_cgroups(cgroup_dirs(self.spec.name, host.name))
        root = self.host_dir(host) / "root"
        if _is_mounted(root):
            _run("umount", str(root))


@dataclass(frozen=True)
class RegisteredLab:
    name: str
    state_dir: Path
    run: str


def registered_labs(registry: Path = RUN_DIR) -> list[RegisteredLab]:
    """The labs `up` registered on this machine (since its last boot)."""
    labs = []
    for entry in sorted(registry.glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            data = json.loads(entry.read_text())
            labs.append(RegisteredLab(entry.stem, Path(data["state_dir"]), data.get("run", "")))
    return labs


def remove_run(run: str, image: BaseImage, log: Log = print) -> list[str]:
    """``down`` every lab created with $HXP_LAB_RUN = ``run``; return their names.

    A registry entry whose state is gone (the lab was removed by hand) is dropped.
    """
    removed, errors = [], []
    for entry in registered_labs():
        if entry.run != run:
            continue
        if load_state(entry.state_dir) is None:
            (RUN_DIR / f"{entry.name}.json").unlink(missing_ok=True)
            continue
        try:
            Lab.recorded(entry.state_dir, image, log).down()
            removed.append(entry.name)
        except LabError as exc:
            errors.append(f"lab {entry.name}: {exc}")
    if errors:
        raise LabError("\n".join(errors))
    return removed


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


# --------------------------------------------------------------------------- supervisor


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
            preexec_fn=lambda: _join_cgroups(dirs),  # noqa: PLW1509
        )
        if stopping:  # SIGTERM came while the child was being started
            child.send_signal(signal.SIGTERM)
        code = child.wait()
        if stopping or code != REBOOT_EXIT_CODE:
            print(f"hxp lab: {host} exited with status {code}", flush=True)
            return 0 if stopping else code
        print(f"hxp lab: {host} rebooted; booting it again", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 5 or args[0] != "supervise" or "--" not in args:
        print("usage: python -m hxp_runtime.lab supervise --machine=M --lab=L --host=H -- CMD...")
        return 2
    split = args.index("--")
    options = dict(a.removeprefix("--").split("=", 1) for a in args[1:split])
    return supervise(options["lab"], options["host"], args[split + 1 :])


if __name__ == "__main__":
    sys.exit(main())
