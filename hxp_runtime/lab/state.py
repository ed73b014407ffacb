"""What is on disk about labs: each lab's record of what ``up`` created (``STATE/state.json``)
and this machine's registry of labs (``/run/hxp-lab/<name>.json``: which state directory owns
a lab name, and the run that created it)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hxp_runtime.lab.errors import LabError
from hxp_runtime.lab.hostos import write_file
from hxp_runtime.lab.spec import LabHost, LabSpec

RUN_DIR = Path("/run/hxp-lab")
RUN_ENV = "HXP_LAB_RUN"


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


def state_file(state_dir: Path) -> Path:
    return state_dir / "state.json"


def load_state(state_dir: Path) -> LabState | None:
    path = state_file(state_dir)
    if not path.exists():
        return None
    try:
        return LabState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise LabError(f"{path}: unreadable lab state ({exc}); remove the lab by hand") from None


def save_state(state_dir: Path, state: LabState) -> None:
    write_file(state_file(state_dir), json.dumps(asdict(state), indent=2) + "\n", 0o600)


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class RegisteredLab:
    name: str
    state_dir: Path
    run: str


def registry_file(registry: Path, name: str) -> Path:
    return registry / f"{name}.json"


def register(registry: Path, name: str, state_dir: Path, run: str) -> None:
    """Record that the lab ``name`` of this machine lives in ``state_dir``."""
    entry = {"state_dir": str(state_dir), "run": run}
    write_file(registry_file(registry, name), json.dumps(entry) + "\n")


def registry_owner(registry: Path, name: str) -> Path | None:
    """The state directory that registered the lab ``name``; None when none did."""
    try:
        return Path(json.loads(registry_file(registry, name).read_text())["state_dir"])
    except (OSError, ValueError, KeyError):
        return None


def unregister(registry: Path, name: str) -> None:
    """Drop the entry of lab ``name``, and the registry itself once it is empty."""
    registry_file(registry, name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        registry.rmdir()


def registered_labs(registry: Path = RUN_DIR) -> list[RegisteredLab]:
    """The labs `up` registered on this machine (since its last boot)."""
    labs = []
    for entry in sorted(registry.glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            data = json.loads(entry.read_text())
            labs.append(RegisteredLab(entry.stem, Path(data["state_dir"]), data.get("run", "")))
    return labs
