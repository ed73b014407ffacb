"""The lab's apt proxy: one apt-cacher-ng per lab, bound to the bridge address, whose cache
every lab shares without two of them ever writing it at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hxp_runtime.lab.cgroups import cgroup_dirs, join_cgroups, kill_cgroups
from hxp_runtime.lab.errors import LabError
from hxp_runtime.lab.hostos import (
    STOP_TIMEOUT_S,
    is_mounted,
    locked,
    mount_overlay,
    pid_alive,
    port_open,
    read_pid,
    unmount,
    wait_gone,
    write_file,
)
from hxp_runtime.lab.spec import LabSpec
from hxp_runtime.lab.state import RUN_DIR

PROXY_PASSTHROUGH = r"^(pypi\.org|files\.pythonhosted\.org):443$"
START_TIMEOUT_S = 10.0


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
    def run_dir(self) -> Path:
        return self.directory / "run"

    @property
    def conf_dir(self) -> Path:
        return self.directory / "conf"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "apt-cacher-ng.pid"

    @property
    def socket(self) -> Path:
        return RUN_DIR / f"{self.spec.name}.acng"

    @property
    def cgroups(self) -> list[Path]:
        return cgroup_dirs(self.spec.name, "apt-proxy")

    def running(self) -> bool:
        pid = read_pid(self.pid_file)
        return pid is not None and pid_alive(pid, str(self.directory))

    def start(self) -> None:
        if self.running():
            return
        self._mount_cache()
        write_file(
            self.conf_dir / "acng.conf",
            acng_conf(self.spec, self.mountpoint, self.run_dir, self.socket),
        )
        proc = self._launch()
        self._wait_listening(proc)

    def _mount_cache(self) -> None:
        """The overlay of this lab's cache on the shared one, mounted once."""
        self.shared_cache.mkdir(parents=True, exist_ok=True)
        upper, work = self.directory / "upper", self.directory / "work"
        for d in (upper, work, self.run_dir, self.mountpoint):
            d.mkdir(parents=True, exist_ok=True)
        if not is_mounted(self.mountpoint):
            mount_overlay(self.shared_cache, upper, work, self.mountpoint)

    def _launch(self) -> subprocess.Popen[bytes]:
        """Start apt-cacher-ng detached, in the proxy's cgroups; record its pid."""
        for directory in self.cgroups:
            directory.mkdir(parents=True, exist_ok=True)
        log = (self.run_dir / "apt-cacher-ng.out").open("ab")
        proc = subprocess.Popen(
            ["apt-cacher-ng", "-c", str(self.conf_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: join_cgroups(self.cgroups),  # noqa: PLW1509 - no threads here
        )
        log.close()
        write_file(self.pid_file, f"{proc.pid}\n")
        return proc

    def _wait_listening(self, proc: subprocess.Popen[bytes]) -> None:
        """Return once the proxy accepts connections; raise with its logs if it never does."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(str(self.spec.gateway.ip), self.spec.apt_proxy_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                logs = [self.run_dir / "apt-cacher-ng.out", self.run_dir / "apt-cacher.err"]
                tail = "".join(p.read_text(errors="replace")[-800:] for p in logs if p.exists())
                raise LabError(
                    f"apt-cacher-ng did not start on {self.spec.apt_proxy_url} "
                    f"(logs in {self.run_dir}):\n{tail}"
                )
            time.sleep(0.05)

    def terminate(self) -> int | None:
        """Ask apt-cacher-ng to exit (it takes a moment); return its pid, None if not running."""
        pid = read_pid(self.pid_file)
        if pid is None or not pid_alive(pid, str(self.directory)):
            return None
        os.kill(pid, signal.SIGTERM)
        return pid

    def stop(self, pid: int | None) -> None:
        """Wait for ``pid`` (from :meth:`terminate`), then remove the cgroup and the mount."""
        if pid is not None:
            wait_gone(pid, STOP_TIMEOUT_S)
        kill_cgroups(self.cgroups)
        self.socket.unlink(missing_ok=True)
        if is_mounted(self.mountpoint):
            unmount(self.mountpoint)
        upper = self.directory / "upper"
        if upper.is_dir():
            with locked(self.lock):
                merge_tree(upper, self.shared_cache)
