"""Golden files: what `hxp render` writes for inventory/sample, inventory/lab,
inventory/lab-scale (two LLM hosts, models with replicas) and inventory/pipeline (a model split
across two LLM hosts).

A change to render, to the schema's defaults or to the planner shows up as a diff of these files
in review. ``python -m tests.golden update`` writes them again; tests/unit/test_golden_renders.py
renders into a temporary directory and compares. Paths of the checkout itself (the lab's bundle
path is absolute) are written as ``<checkout>``, so the files do not depend on where the
repository lives.
"""

from __future__ import annotations

import difflib
import shutil
import tempfile
from pathlib import Path

from hxp_runtime.config import load_config, plan_deployment
from hxp_runtime.render import render_inventory

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent
# name -> config, relative to the repository root: rendered as `hxp render` run from there.
CONFIGS = {
    "sample": Path("inventory/sample/hxp.yml"),
    "lab": Path("inventory/lab/hxp.yml"),
    "lab-scale": Path("inventory/lab-scale/hxp.yml"),
    "pipeline": Path("inventory/pipeline/hxp.yml"),
}
CHECKOUT = "<checkout>"
UPDATE_COMMAND = "python -m tests.golden update"


def checkout_paths(repo: Path) -> list[tuple[str, str]]:
    """(absolute path, placeholder) pairs, longest path first.

    The checkout's own path, and the targets of links at its top (.cache, .venv may point at
    another checkout): render resolves links, so either can end up in a rendered path.
    """
    pairs = {str(repo): CHECKOUT, str(repo.resolve()): CHECKOUT}
    for entry in repo.iterdir():
        if entry.is_symlink():
            pairs.setdefault(str(entry.resolve()), f"{CHECKOUT}/{entry.name}")
    return sorted(pairs.items(), key=lambda pair: (-len(pair[0]), pair[0]))


def normalise(text: str, repo: Path = REPO) -> str:
    for path, placeholder in checkout_paths(repo):
        text = text.replace(path, placeholder)
    return text


def render(name: str, out: Path, repo: Path = REPO) -> dict[str, str]:
    """Render config ``name`` into ``out``; return each written file (relative path, POSIX
    separators) and its normalised text."""
    source = CONFIGS[name]
    cfg = load_config(repo / source)
    written = render_inventory(cfg, plan_deployment(cfg), out, source)
    return {
        path.relative_to(out).as_posix(): normalise(path.read_text(encoding="utf-8"), repo)
        for path in sorted(written)
    }


def golden_files(name: str) -> dict[str, str]:
    directory = GOLDEN / name
    return {
        path.relative_to(directory).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def differences(name: str, rendered: dict[str, str]) -> list[str]:
    """One message per file that differs from its golden copy, with a unified diff."""
    golden = golden_files(name)
    found = []
    for relative in sorted(golden.keys() | rendered.keys()):
        where = f"tests/golden/{name}/{relative}"
        if relative not in rendered:
            found.append(f"{where}: render no longer writes this file")
        elif relative not in golden:
            found.append(f"{where}: render writes this file, the golden copy is missing")
        elif golden[relative] != rendered[relative]:
            diff = difflib.unified_diff(
                golden[relative].splitlines(keepends=True),
                rendered[relative].splitlines(keepends=True),
                fromfile=f"{where} (golden)",
                tofile=f"{where} (rendered now)",
            )
            found.append("".join(diff))
    return found


def update() -> list[Path]:
    """Render every config again and replace its golden directory (files render no longer
    writes go)."""
    written = []
    for name in sorted(CONFIGS):
        with tempfile.TemporaryDirectory() as tmp:
            rendered = render(name, Path(tmp))
        target = GOLDEN / name
        if target.exists():
            shutil.rmtree(target)
        for relative, text in rendered.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written
