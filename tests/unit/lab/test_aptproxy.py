"""The lab's apt-cacher-ng: its configuration, its paths, merging its cache into the shared one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hxp_runtime.lab.aptproxy import PROXY_PASSTHROUGH, AptProxy, acng_conf, merge_tree
from hxp_runtime.lab.spec import LabSpec


def test_apt_cacher_ng_binds_the_bridge_only(spec: LabSpec) -> None:
    conf = acng_conf(spec, Path("/c"), Path("/r"), Path("/run/x.acng"))
    assert "BindAddress: 10.99.5.1\n" in conf
    assert "Port: 3142\n" in conf
    assert "CacheDir: /c\n" in conf and "SocketPath: /run/x.acng\n" in conf
    assert "PidFile: /r/apt-cacher-ng.pid\n" in conf
    assert f"PassThroughPattern: {PROXY_PASSTHROUGH}\n" in conf
    assert "Remap" not in conf


def test_proxy_paths(tmp_path: Path, spec: LabSpec) -> None:
    proxy = AptProxy(spec, tmp_path / "shared", tmp_path / "lock")
    assert proxy.directory == spec.state_dir / "apt-proxy"
    assert proxy.mountpoint == proxy.directory / "cache"
    # The conf names this pid file; start() and terminate() read it.
    assert f"PidFile: {proxy.pid_file}\n" in acng_conf(
        spec, proxy.mountpoint, proxy.run_dir, proxy.socket
    )
    # A socket path must fit 108 bytes wherever the state directory is.
    assert proxy.socket == Path("/run/hxp-lab/unit-lab.acng")
    assert [p.name for p in proxy.cgroups] == ["apt-proxy"] * len(proxy.cgroups)


def test_a_proxy_without_a_live_pid_is_not_running(tmp_path: Path, spec: LabSpec) -> None:
    proxy = AptProxy(spec, tmp_path / "shared", tmp_path / "lock")
    assert not proxy.running()
    assert proxy.terminate() is None
    proxy.pid_file.parent.mkdir(parents=True)
    proxy.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not an apt-cacher-ng of this lab
    assert not proxy.running()
    assert proxy.terminate() is None


def test_merge_tree_copies_files_only(tmp_path: Path) -> None:
    upper, shared = tmp_path / "upper", tmp_path / "shared"
    (upper / "deb.debian.org/debian/pool").mkdir(parents=True)
    (upper / "deb.debian.org/debian/pool/a.deb").write_bytes(b"new")
    (shared / "deb.debian.org/debian").mkdir(parents=True)
    (shared / "deb.debian.org/debian/old.deb").write_bytes(b"old")
    (upper / "link").symlink_to("/etc/passwd")
    whiteout = upper / "deb.debian.org/debian/old.deb"
    if os.geteuid() == 0:  # overlayfs records a deletion as a 0/0 character device
        os.mknod(whiteout, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    assert merge_tree(upper, shared) == 1
    assert (shared / "deb.debian.org/debian/pool/a.deb").read_bytes() == b"new"
    assert (shared / "deb.debian.org/debian/old.deb").read_bytes() == b"old"
    assert not (shared / "link").exists()
    assert not list(shared.rglob("*.hxp-merge"))


def test_merge_tree_replaces_what_the_shared_cache_has(tmp_path: Path) -> None:
    upper, shared = tmp_path / "upper", tmp_path / "shared"
    (upper / "dists").mkdir(parents=True)
    (upper / "dists/Release").write_text("newer")
    (shared / "dists").mkdir(parents=True)
    (shared / "dists/Release").write_text("older")
    assert merge_tree(upper, shared) == 1
    assert (shared / "dists/Release").read_text() == "newer"
