"""No import cycle between the modules of hxp_runtime.

The graph is read from the source, not from what happens to be imported at run time: every
``import`` and ``from ... import`` statement that can run counts, absolute or relative, at module
level or inside a function or a ``try``. An import deferred into a function still ties the two
modules together; it only moves the failure to the first call. An import under
``if TYPE_CHECKING:`` never runs (it names a type for mypy, which resolves cycles of
annotations), so it is no edge; its ``else:`` branch runs and is.

Importing ``a.b.c`` runs ``a/b/__init__.py`` before ``a/b/c.py``, so a module also depends on the
packages above what it imports, except its own (they are being imported already when it runs).
Without that rule, ``planner -> config.schema`` next to ``config/__init__ -> config.fit ->
planner`` would look acyclic, yet ``import planner`` would fail half-way.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import hxp_runtime

Graph = dict[str, set[str]]


def modules_under(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package in directory ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package, *parts))] = path
    return modules


def _from_base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name of the module a ``from X import ...`` reads from."""
    if node.level == 0:
        return node.module or ""
    # Level 1 is the package the module is in (a package's __init__ is in itself).
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes_that_run(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` but those only type checkers read."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def named_modules(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every name an import statement that can run in ``source`` may import as a module: the
    module imported from, and each name imported from it (``from pkg import submodule``)."""
    for node in _nodes_that_run(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, module, is_package)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _packages_above(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def import_graph(root: Path, package: str) -> Graph:
    """Module -> the modules of the package it makes Python import (and so must not import it)."""
    modules = modules_under(root, package)
    graph: Graph = {name: set() for name in modules}
    for module, path in modules.items():
        own = {module, *_packages_above(module)}
        is_package = path.name == "__init__.py"
        for name in named_modules(path.read_text(encoding="utf-8"), module, is_package):
            if name not in modules:
                continue
            graph[module].update(
                target for target in (*_packages_above(name), name) if target not in own
            )
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the path around it (first == last), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        pending = [iter(sorted(graph.get(start, ())))]
        while pending:
            following = next(pending[-1], None)
            if following is None:
                done.add(path.pop())
                pending.pop()
            elif following in path:
                return [*path[path.index(following) :], following]
            elif following not in done:
                path.append(following)
                pending.append(iter(sorted(graph.get(following, ()))))
    return None


def cycle_text(cycle: list[str]) -> str:
    return " -> ".join(cycle)


# --------------------------------------------------------------------------- hxp_runtime


@pytest.fixture(scope="module")
def hxp_graph() -> Graph:
    return import_graph(Path(hxp_runtime.__file__).parent, "hxp_runtime")


def test_hxp_runtime_has_no_import_cycle(hxp_graph: Graph) -> None:
    cycle = find_cycle(hxp_graph)
    assert cycle is None, f"import cycle: {cycle_text(cycle)}"


def test_the_planner_imports_nothing_of_the_config_package(hxp_graph: Graph) -> None:
    # The config calls the planner (config.fit); the planner takes plain data.
    planner_imports = hxp_graph["hxp_runtime.planner"]
    assert not {m for m in planner_imports if m.startswith("hxp_runtime.config")}
    assert "hxp_runtime.planner" in hxp_graph["hxp_runtime.config.fit"]


# --------------------------------------------------------------------------- the cycle finder


def test_find_cycle_on_small_graphs() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None  # diamond
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    # A module reached again after its subtree was finished is not a cycle.
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a"}}) is None


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root / "pkg"


def test_every_import_that_can_run_is_an_edge(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": (
                "import pkg.b\n"
                "from . import c\n"
                "from .sub import d\n"
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from pkg.sub.e import E\n"
                "if typing.TYPE_CHECKING:\n"
                "    import pkg.sub.e\n"
                "else:\n"
                "    import pkg.h\n"
                "def later():\n"
                "    from pkg import f\n"
                "try:\n"
                "    import pkg.g as g\n"
                "except ImportError:\n"
                "    pass\n"
            ),
            **{f"pkg/{name}.py": "" for name in "bcfgh"},
            "pkg/sub/__init__.py": "from ..b import B\n",
            "pkg/sub/d.py": "from .. import c\n",
            "pkg/sub/e.py": "import os\nimport yaml\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {
        "pkg.b",
        "pkg.c",
        "pkg.sub",
        "pkg.sub.d",
        "pkg.f",
        "pkg.g",
        "pkg.h",
    }
    assert graph["pkg.sub"] == {"pkg.b"}
    assert graph["pkg.sub.d"] == {"pkg.c"}  # its own package pkg.sub is no edge
    assert graph["pkg.sub.e"] == set()
    assert graph["pkg"] == set()


def test_a_cycle_of_annotations_only_is_no_import_cycle(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/app.py": "from pkg.handlers import Handlers\nclass Gateway: ...\n",
            "pkg/handlers.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from pkg.app import Gateway\n"
                "class Handlers: ...\n"
            ),
        },
    )
    assert find_cycle(import_graph(root, "pkg")) is None
    (root / "handlers.py").write_text("from pkg.app import Gateway\n", encoding="utf-8")
    cycle = find_cycle(import_graph(root, "pkg"))
    assert cycle is not None
    assert cycle_text(cycle) == "pkg.app -> pkg.handlers -> pkg.app"


def test_the_old_config_planner_cycle_is_found(tmp_path: Path) -> None:
    # config.py deferred its planner import into a function to break the cycle at run time.
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/config.py": (
                "class Model: ...\n"
                "def plan_problems():\n"
                "    from pkg.planner import plan_deployment  # noqa: PLC0415 - cycle\n"
            ),
            "pkg/planner.py": "from pkg.config import Model\ndef plan_deployment(): ...\n",
        },
    )
    cycle = find_cycle(import_graph(root, "pkg"))
    assert cycle is not None
    assert cycle_text(cycle) == "pkg.config -> pkg.planner -> pkg.config"


def test_a_cycle_through_a_package_init_is_found_and_is_real(tmp_path: Path) -> None:
    # The planner imports only config.schema, but that runs config/__init__ first.
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/config/__init__.py": "from pkg.config.fit import plan\n",
            "pkg/config/schema.py": "class Model: ...\n",
            "pkg/config/fit.py": "from pkg.planner import place\ndef plan(): ...\n",
            "pkg/planner.py": "from pkg.config.schema import Model\ndef place(): ...\n",
        },
    )
    cycle = find_cycle(import_graph(root, "pkg"))
    assert cycle is not None
    assert cycle_text(cycle) == "pkg.config -> pkg.config.fit -> pkg.planner -> pkg.config"
    imported = subprocess.run(
        [sys.executable, "-c", "import pkg.planner"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.returncode != 0
    assert "partially initialized module 'pkg.planner'" in imported.stderr
