"""A lab's life on this machine: ``up`` (claim the name and network, then boot every host),
``status``, ``power_off`` (some hosts, keeping their disks), ``down`` (remove exactly what ``up``
recorded) and removing every lab of a run.

Several labs run side by side: each has its own name (the deployment name), bridge, subnet,
cgroups and state directory. Everything ``up`` creates is recorded in ``state.json`` before it
is created, so ``down`` removes exactly that (processes, mounts, bridge, cgroups, the files
it wrote) and nothing else, even after an ``up`` that failed half-way.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hxp_runtime.lab.aptproxy import AptProxy
from hxp_runtime.lab.cgroups import kill_cgroups, lab_cgroups, remove_empty_parents
from hxp_runtime.lab.errors import LabError, Log
from hxp_runtime.lab.guest import GuestRoot, ensure_key
from hxp_runtime.lab.hostos import (
    configure_bridge,
    create_bridge,
    delete_bridge,
    ignore_vanished,
    link_exists,
    locked,
    mountinfo,
    mounts_under,
    port_open,
    used_networks,
    write_file,
)
from hxp_runtime.lab.image import BaseImage
from hxp_runtime.lab.inventory import write_inventory
from hxp_runtime.lab.spec import LabHost, LabSpec, LabTls, free_network
from hxp_runtime.lab.state import (
    RUN_DIR,
    RUN_ENV,
    LabState,
    load_state,
    register,
    registered_labs,
    registry_file,
    registry_owner,
    save_state,
    unregister,
)
from hxp_runtime.lab.supervisor import HostMachine

if TYPE_CHECKING:
    from hxp_runtime.certs import Issued

BOOT_TIMEOUT_S = 90.0
# Booted, for `up`: systemd past its early boot and sshd answering. "starting" counts: a host
# booted again after a deploy runs that deploy's units, and a vLLM server's unit stays starting
# until its model is ready (minutes on CPU), which is the deployment's business, not the lab's.
BOOTED_STATES = frozenset({"running", "degraded", "starting"})


def write_tls_files(tls: LabTls, ca: Issued, before_write: Callable[[Path], None]) -> None:
    """Each pair of ``tls`` issued by ``ca`` for its host's name and addresses, and the CA's
    certificate at each CA reference, where the files do not exist (0600); ``before_write`` is
    told each path first."""
    # Here, not at the top: cryptography loads slowly, and every `hxp` command loads this module.
    from hxp_runtime.certs import issue, write_private  # noqa: PLC0415

    for pair in tls.pairs:
        if pair.certificate.exists() and pair.key.exists():
            continue
        issued = issue(ca, pair.host, pair.addresses)
        for path, data in ((pair.certificate, issued.certificate), (pair.key, issued.key)):
            before_write(path)
            write_private(path, data)
    for path in tls.ca_files:
        if not path.exists():
            before_write(path)
            write_private(path, ca.certificate)


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

    # ------------------------------------------------------------------ parts

    def host_dir(self, host: LabHost) -> Path:
        return self.spec.state_dir / "hosts" / host.name

    def machine(self, host: LabHost) -> HostMachine:
        return HostMachine(self.spec, host, self.host_dir(host))

    def _proxy(self) -> AptProxy:
        return AptProxy(self.spec, self.image.cache_dir / "apt", self.image.lock)

    def _registry_owner(self) -> Path | None:
        return registry_owner(self.registry, self.spec.name)

    def _register(self, state: LabState) -> None:
        register(self.registry, self.spec.name, self.spec.state_dir, state.run)

    # ------------------------------------------------------------------ up

    def up(self, *, auto_network: bool = False) -> LabSpec:
        """Bring every host up (idempotent); return the spec as running (final addresses)."""
        rootfs = self.image.ensure(self.log)
        self._remove_stale_namesake()
        with locked(self.image.lock):
            state = self._claim(auto_network)
        state.base_rootfs = str(rootfs)
        save_state(self.spec.state_dir, state)
        self._ensure_bridge(state)
        self._ensure_secret_files(state)
        self._ensure_tls(state)
        ensure_key(self.spec)
        self._proxy().start()
        started = {h.name: self._ensure_host(h, rootfs) for h in self.spec.hosts}
        self._wait_ready(started)
        write_inventory(self.spec)
        return self.spec

    def _claim(self, auto_network: bool) -> LabState:
        """Take the lab name and network on this machine (under the machine-wide lock)."""
        state = load_state(self.spec.state_dir)
        if state is not None:
            return self._adopt(state, auto_network)
        owner = self._registry_owner()
        if owner is not None and owner != self.spec.state_dir and load_state(owner) is not None:
            raise LabError(
                f"a lab named {self.spec.name!r} is already up from {owner}; change `name` in the "
                "config or run `hxp lab down` with that lab's config"
            )
        self._choose_network(auto_network)
        state = self._record_new()
        # Claim the network now, still under the lock, so a concurrent `up` sees it taken.
        self._ensure_bridge(state)
        return state

    def _adopt(self, state: LabState, auto_network: bool) -> LabState:
        """Take over the lab recorded in ``state`` if it is the one the config asks for."""
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
        self.spec = replace(recorded, secret_files=self.spec.secret_files, tls=self.spec.tls)
        self._register(state)
        return state

    def _choose_network(self, auto_network: bool) -> None:
        """Move the spec to a free network, or check that its own is free on this machine."""
        used, links = used_networks()
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

    def _record_new(self) -> LabState:
        """Create the state directory (recording the parents it adds), its state and entry."""
        state = LabState.of(self.spec)
        state.run = os.environ.get(RUN_ENV, "")
        missing = [p for p in self.spec.state_dir.parents if not p.exists()]
        state.created_dirs.extend(str(d) for d in reversed(missing))
        self.spec.state_dir.mkdir(parents=True, exist_ok=True)
        save_state(self.spec.state_dir, state)
        self._register(state)
        return state

    def _remove_stale_namesake(self) -> None:
        """Remove a lab of this name from another directory when none of its hosts runs any
        more (its processes ended with whatever started them), so this one can take the name.
        A namesake with a running host is left alone: `_claim` refuses with its reason."""
        owner = self._registry_owner()
        if owner is None or owner == self.spec.state_dir or load_state(owner) is None:
            return
        other = Lab.recorded(owner, self.image, self.log)
        if any(other.machine(h).supervisor_pid() is not None for h in other.spec.hosts):
            return
        self.log(f"lab {self.spec.name!r} of {owner} has no running host left: removing it")
        other.down()

    def _ensure_bridge(self, state: LabState) -> None:
        if not link_exists(self.spec.bridge):
            state.created_bridge = True
            save_state(self.spec.state_dir, state)
            create_bridge(self.spec.bridge)
        configure_bridge(self.spec.bridge, self.spec.gateway)

    def _ensure_secret_files(self, state: LabState) -> None:
        """Create each missing ``file:`` secret of the config: random, 0600, in a 0700 dir."""
        for path in self.spec.secret_files:
            if not path.exists():
                self._record_secret_file(state, path)
                write_file(path, secrets.token_urlsafe(32), 0o600)

    def _record_secret_file(self, state: LabState, path: Path) -> None:
        """Note a secret file (and the directories it needs) for `down`, then make its dir."""
        missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        state.created_dirs.extend(str(d) for d in reversed(missing))
        state.created_secret_files.append(str(path))
        save_state(self.spec.state_dir, state)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _ensure_tls(self, state: LabState) -> None:
        """The lab's CA (in the state directory, key 0600), and the files of the config's TLS
        (router.tls, database.tls, cache.tls) made with it where they do not exist."""
        from hxp_runtime.certs import FileCa  # noqa: PLC0415 - as in write_tls_files

        ca = FileCa(self.spec.ca_dir).ensure(f"hxp lab {self.spec.name} CA")
        if self.spec.tls is not None:
            write_tls_files(self.spec.tls, ca, partial(self._record_secret_file, state))

    def _ensure_host(self, host: LabHost, rootfs: Path) -> subprocess.Popen[bytes] | None:
        """Start the host's supervisor unless it runs; return the process started, if any."""
        machine = self.machine(host)
        if machine.supervisor_pid() is not None:
            return None
        root = GuestRoot(machine.directory).prepare(self.spec, host, rootfs)
        return machine.start(root)

    def _wait_ready(self, started: dict[str, subprocess.Popen[bytes] | None]) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        pending = list(self.spec.hosts)
        while pending:
            pending = [h for h in pending if not self._booted(h, started.get(h.name))]
            if pending and time.monotonic() > deadline:
                names = ", ".join(h.name for h in pending)
                raise LabError(
                    f"hosts {names} did not finish booting in {BOOT_TIMEOUT_S:.0f}s; "
                    f"{self.machine(pending[0]).log_tail()}"
                )
            if pending:
                time.sleep(0.1)

    def _booted(self, host: LabHost, proc: subprocess.Popen[bytes] | None) -> bool:
        """The host's systemd is up and sshd answers; raise if its supervisor stopped."""
        machine = self.machine(host)
        # A supervisor just started may not have exec'd yet: ask the Popen, not /proc.
        stopped = proc.poll() is not None if proc else machine.supervisor_pid() is None
        if stopped:
            raise LabError(f"host {host.name} stopped while booting; {machine.log_tail()}")
        return machine.system_state() in BOOTED_STATES and port_open(str(host.address), 22)

    # ------------------------------------------------------------------ status

    def status(self) -> list[HostStatus] | None:
        """Each host's state, or None when the lab is not up."""
        state = load_state(self.spec.state_dir)
        if state is None:
            return None
        self.spec = replace(
            state.spec(self.spec.state_dir), secret_files=self.spec.secret_files, tls=self.spec.tls
        )
        return [self._host_status(h) for h in self.spec.hosts]

    def _host_status(self, host: LabHost) -> HostStatus:
        machine = self.machine(host)
        running = machine.supervisor_pid() is not None
        return HostStatus(host.name, str(host.address), running, machine.system_state())

    # ------------------------------------------------------------------ power off

    def power_off(self, names: Iterable[str]) -> list[str]:
        """Power the named hosts off: each guest's systemd shuts down, its network link goes.
        Their disks (overlays) and the rest of the lab stay, so ``up`` boots them again as they
        were. Returns the names that were running; raises LabError for a name not in the lab."""
        state = load_state(self.spec.state_dir)
        if state is None:
            raise LabError(f"lab {self.spec.name!r} is not up (no state in {self.spec.state_dir})")
        self.spec = state.spec(self.spec.state_dir)
        hosts = [self.spec.host(name) for name in dict.fromkeys(names)]
        supervisors = self._signal_power_off(hosts)
        self._wait_powered_off(hosts, supervisors)
        return [name for name, pid in supervisors.items() if pid is not None]

    def _signal_power_off(self, hosts: Sequence[LabHost]) -> dict[str, int | None]:
        """Ask each running host to power off, all at once (a guest takes ~2 s); their
        supervisors' pids by host name (None: not running)."""
        supervisors = {h.name: self.machine(h).supervisor_pid() for h in hosts}
        for pid in supervisors.values():
            if pid is not None:
                # The supervisor passes SIGTERM on to systemd-nspawn, which powers the guest off.
                os.kill(pid, signal.SIGTERM)
        return supervisors

    def _wait_powered_off(
        self, hosts: Sequence[LabHost], supervisors: dict[str, int | None]
    ) -> None:
        """Wait for the signalled hosts, then clear their cgroups and unmount their roots."""
        for host in hosts:
            self.machine(host).stop(supervisors[host.name], self.log)

    # ------------------------------------------------------------------ down

    def down(self) -> bool:
        """Remove everything ``up`` recorded; False when there was no lab to remove."""
        state = load_state(self.spec.state_dir)
        if state is None:
            return False
        self.spec = state.spec(self.spec.state_dir)
        self._stop_processes()
        if state.created_bridge and link_exists(self.spec.bridge):
            delete_bridge(self.spec.bridge)
        for path in state.created_secret_files:
            Path(path).unlink(missing_ok=True)
        self._remove_files(state)
        return True

    def _stop_processes(self) -> None:
        """Power every guest off, stop the proxy, then clear the lab's cgroups and mounts."""
        # Signal everything first: guests power off and the proxy exits in parallel (~2 s each).
        supervisors = self._signal_power_off(self.spec.hosts)
        proxy = self._proxy()
        proxy_pid = proxy.terminate()
        self._wait_powered_off(self.spec.hosts, supervisors)
        proxy.stop(proxy_pid)
        cgroups = lab_cgroups(self.spec.name)
        kill_cgroups(cgroups)
        for directory in cgroups:
            remove_empty_parents(directory.parent, directory.parent.parent)

    def _remove_files(self, state: LabState) -> None:
        """Remove the state directory, the registry entry and the directories ``up`` created."""
        leftovers = mounts_under(mountinfo(), self.spec.state_dir)
        if leftovers:
            raise LabError(f"still mounted, not removing {self.spec.state_dir}: {leftovers[0]}")
        if self._registry_owner() == self.spec.state_dir:
            unregister(self.registry, self.spec.name)
        shutil.rmtree(self.spec.state_dir, onerror=ignore_vanished)
        for created in reversed(state.created_dirs):  # only if empty: others may use them now
            with contextlib.suppress(OSError):
                Path(created).rmdir()


def remove_run(run: str, image: BaseImage, log: Log = print) -> list[str]:
    """``down`` every lab created with $HXP_LAB_RUN = ``run``; return their names.

    A registry entry whose state is gone (the lab was removed by hand) is dropped.
    """
    removed, errors = [], []
    for entry in registered_labs():
        if entry.run != run:
            continue
        if load_state(entry.state_dir) is None:
            registry_file(RUN_DIR, entry.name).unlink(missing_ok=True)
            continue
        try:
            Lab.recorded(entry.state_dir, image, log).down()
            removed.append(entry.name)
        except LabError as exc:
            errors.append(f"lab {entry.name}: {exc}")
    if errors:
        raise LabError("\n".join(errors))
    return removed
