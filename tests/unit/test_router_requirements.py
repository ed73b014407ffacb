"""requirements/router.txt is the router's whole environment on a host (installed --no-deps from
the bundle's `router` wheelhouse): every package hxp-router needs, each dependency of those, and
the versions pyproject.toml pins for the controller. The bundle spec of the lab builds it."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from hxp_runtime.bundle import WheelSpec, load_spec

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)$")
# The hosts' Python (Debian 12's python3): dependency markers are evaluated for it, not for the
# Python running the tests (redis needs async-timeout below 3.11.3 only).
HOST_PYTHON = {"python_version": "3.11", "python_full_version": "3.11.2", "extra": ""}
# What hxp_runtime.router imports from outside the standard library (server and workers).
ROUTER_IMPORTS = [
    "aiohttp",
    "uvloop",
    "asyncpg",
    "redis",
    "prometheus-client",
    "pydantic",
    "pyyaml",
]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            match = PIN.match(line)
            assert match, f"{path.name}: {line!r} is not NAME==VERSION"
            found[canonicalize_name(match[1])] = match[2]
    return found


def test_router_pins_agree_with_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    controller = {
        canonicalize_name(req.name): str(req.specifier).removeprefix("==")
        for req in map(Requirement, pyproject["project"]["dependencies"])
    }
    router = pins(REPO / "requirements" / "router.txt")
    for name in map(canonicalize_name, ROUTER_IMPORTS):
        assert name in router, f"requirements/router.txt: pin {name}, which the router imports"
    differ = {
        n: (v, controller[n]) for n, v in router.items() if n in controller and v != controller[n]
    }
    assert not differ, f"router.txt vs pyproject.toml: {differ}"


def test_router_pins_are_closed_under_dependencies() -> None:
    """Each pinned package's own requirements (for the hosts' Python) are pinned too: the host
    installs with --no-deps, so a missing one fails only when the router imports it."""
    router = pins(REPO / "requirements" / "router.txt")
    missing = set()
    for name in router:
        if name == "async-timeout":
            continue  # not installed here (Python >= 3.11.3); it has no requirements
        for spec in importlib.metadata.requires(name) or []:
            req = Requirement(spec)
            applies = req.marker is None or req.marker.evaluate(HOST_PYTHON)
            if applies and canonicalize_name(req.name) not in router:
                missing.add(f"{req.name} (for {name})")
    assert not missing, f"requirements/router.txt lacks: {sorted(missing)}"


def test_lab_bundle_builds_the_router_wheelhouse_from_this_project() -> None:
    spec = load_spec(REPO / "inventory" / "lab" / "bundle.yml")
    router = next(a for a in spec.artifacts if a.name == "router")
    assert isinstance(router, WheelSpec)
    assert router.no_deps
    assert router.requirements == ["-r ../../requirements/router.txt"]
    assert router.project is not None
    assert (REPO / "inventory" / "lab" / router.project).resolve() == REPO


def test_the_router_imports_nothing_outside_its_requirements() -> None:
    """hxp-router starts with only requirements/router.txt installed: cryptography, which the
    controller's TLS checks use (hxp_runtime.certs), is not there."""
    guard = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def guard(name, *args, **kwargs):\n"
        "    if name.split('.')[0] in {'cryptography', 'ansible', 'typer', 'rich', 'jinja2'}:\n"
        "        raise ImportError(f'{name} is not in requirements/router.txt')\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = guard\n"
        "import hxp_runtime.router.server\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", guard], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
