"""The base image: one Debian rootfs (debootstrap, kept as a tar.zst) every lab host overlays.

Its cache key covers everything that goes into it (format, suite, packages, mirror, the
controller's extra CA certificates), so a change to any of them builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hxp_runtime.lab.errors import LabError, Log
from hxp_runtime.lab.hostos import locked, run

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


def controller_mirror(sources: dict[str, str]) -> str:
    """The Debian mirror the controller's apt uses (``sources`` maps file name to its text)."""
    for name, text in sorted(sources.items()):
        found = _deb822_mirror(text) if name.endswith(".sources") else _one_line_mirror(text)
        if found is not None:
            return found
    return DEFAULT_MIRROR


def _deb822_mirror(text: str) -> str | None:
    """The first URI of a stanza for the suite in a deb822 ``.sources`` file."""
    for stanza in text.split("\n\n"):
        fields = dict(
            line.split(":", 1)
            for line in stanza.splitlines()
            if ":" in line and not line.startswith(("#", " "))
        )
        suites = fields.get("Suites", "").split()
        if DEBIAN_SUITE in suites and "URIs" in fields:
            return fields["URIs"].split()[0].strip().rstrip("/")
    return None


def _one_line_mirror(text: str) -> str | None:
    """The URI of the first ``deb`` line for the suite in a one-line-style ``.list`` file."""
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 3 and parts[0] == "deb" and DEBIAN_SUITE in parts:
            uri = next(p for p in parts[1:] if "://" in p)
            return uri.rstrip("/")
    return None


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


def debootstrap_command(root: Path, mirror: str) -> list[str]:
    return [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        DEBIAN_SUITE,
        str(root),
        mirror,
    ]


def archive_command(archive: Path, root: Path) -> list[str]:
    """Pack the rootfs ``root`` into ``archive`` (owners and modes kept, zstd)."""
    return [
        "tar",
        "--numeric-owner",
        "-I",
        "zstd -T0 -3",
        "-cpf",
        str(archive),
        "-C",
        str(root),
        ".",
    ]


def extract_command(archive: Path, root: Path) -> list[str]:
    """Unpack ``archive`` into the existing directory ``root`` (owners and modes kept)."""
    return ["tar", "--numeric-owner", "-I", "zstd", "-xpf", str(archive), "-C", str(root)]


def customise_rootfs(root: Path, ca_files: dict[str, bytes]) -> None:
    """Turn a debootstrapped ``root`` into the lab's base: CAs, networkd, no identity, no lists."""
    # The controller's extra CA certificates, so HTTPS through the proxy verifies in guests.
    for name, content in ca_files.items():
        target = root / EXTRA_CA_DIR.relative_to("/") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    run("chroot", str(root), "update-ca-certificates")
    run("chroot", str(root), "systemctl", "enable", "systemd-networkd")
    # Per-host values are written into each overlay; the image carries none of its own.
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("# No DNS in the hxp lab: names are in /etc/hosts.\n")
    run("chroot", str(root), "apt-get", "clean")
    empty_apt_lists(root)


def empty_apt_lists(root: Path) -> None:
    """Remove the package lists of ``root`` and date the empty directory 1970."""
    lists = root / "var/lib/apt/lists"
    for entry in lists.iterdir():
        if entry.is_file():
            entry.unlink()
    (root / "var/lib/apt/periodic/update-success-stamp").unlink(missing_ok=True)
    # Empty lists dated 1970: Ansible's apt cache_valid_time then always updates first.
    os.utime(lists, (0, 0))


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
        with locked(self.lock):
            if rootfs.is_dir():  # another lab built it while this one waited
                return rootfs
            tmp = rootfs.with_name(rootfs.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if self.archive.exists():
                log(f"extracting the base image {self.archive}")
                tmp.mkdir(parents=True)
                run(*extract_command(self.archive, tmp))
            else:
                log(f"building the base image with debootstrap from {self.mirror} (about a minute)")
                self._build(tmp)
                partial = self.archive.with_name(self.archive.name + ".tmp")
                run(*archive_command(partial, tmp))
                partial.replace(self.archive)
            tmp.replace(rootfs)
        return rootfs

    def _build(self, root: Path) -> None:
        root.parent.mkdir(parents=True, exist_ok=True)
        result = run(*debootstrap_command(root, self.mirror), check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise LabError(f"debootstrap failed (exit {result.returncode}):\n{tail}")
        customise_rootfs(root, self.ca_files)
