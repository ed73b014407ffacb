"""`systemd-analyze security` on every unit hxp writes whole, rendered as a deploy renders it
(tests/unit/unit_templates.py) and rated offline by the controller's systemd: 252, Debian 12's,
the hosts' own. The drop-ins on Debian's units are rated on the roles' Molecule hosts
(assert_exposure in roles/conftest.py), where Debian's units exist.

Each unit has two recorded numbers, both upper bounds:
- its overall exposure level (0 safe .. 10 exposed), which must also stay within hxp's limit
  (EXPOSURE_LIMIT, 2.0; docs/security.md records the same numbers);
- the sum of the exposures of the items systemd marks as open. systemd shows an open item's
  share as at least 0.1, so removing any directive it rates raises the sum (the router's unit
  below shows it for each directive of the baseline), where the overall level, a weighted mean
  over some 80 items rounded to 0.1, may not move.
A unit hardened further rates lower: record its new numbers. A unit that cannot reach the limit
needs the reason written beside it in its template and in docs/security.md.

`pytest -rP tests/unit/test_systemd_exposure.py` prints the table.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.conftest import load_file_module
from tests.unit.unit_templates import (
    FILTER_PLUGINS,
    FULL_UNIT_TEMPLATES,
    REPO,
    installed_name,
    render,
)

HARDENING = load_file_module("hxp_systemd_hardening", FILTER_PLUGINS / "hxp_systemd_hardening.py")

# (template, golden render) -> (overall exposure, sum of the open items' exposures).
# vLLM's unit differs by device: "sample" is a GPU host, "lab" a CPU host.
RECORDED: dict[tuple[str, str], tuple[float, float]] = {
    ("grafana-server.service.j2", "sample"): (1.4, 1.9),
    ("hxp-postgresql-backup.service.j2", "sample"): (0.8, 1.4),
    ("hxp-certificate-expiry.service.j2", "sample"): (0.6, 1.0),
    ("hxp-qdrant-snapshot.service.j2", "sample"): (1.5, 2.0),
    ("qdrant.service.j2", "sample"): (1.4, 1.9),
    ("hxp-router.service.j2", "sample"): (1.5, 2.1),
    ("hxp-gpu-exporter.service.j2", "sample"): (1.7, 2.3),
    ("hxp-vllm.service.j2", "sample"): (1.7, 2.5),
    ("hxp-vllm.service.j2", "lab"): (1.5, 2.3),
}
RENDERINGS = [(t, "sample") for t in FULL_UNIT_TEMPLATES] + [
    (t, "lab") for t in FULL_UNIT_TEMPLATES if t.name == "hxp-vllm.service.j2"
]


@dataclass(frozen=True)
class Rating:
    overall: float
    items: float
    # The open items, name -> exposure, as systemd-analyze names them.
    open: dict[str, float]


def rate(path: Path) -> Rating:
    """systemd-analyze security --offline=true on one unit file."""

    def analyse(*options: str) -> str:
        done = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", *options, str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"{path.name}: {done.stderr}"
        return done.stdout

    overall = re.search(r"Overall exposure level for \S+: (\d+\.\d)", analyse())
    assert overall, f"{path.name}: no overall exposure level"
    open_items = {
        item["name"]: float(item["exposure"])
        for item in json.loads(analyse("--json=short"))
        if item["exposure"] is not None
    }
    return Rating(float(overall[1]), round(sum(open_items.values()), 1), open_items)


def rendered(template: Path, golden: str, directory: Path) -> Path:
    """The unit rendered into directory/golden/, under the name it is installed as."""
    path = directory / golden / installed_name(template, golden)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(template, golden))
    return path


def test_the_controller_rates_as_debian_12_does() -> None:
    version = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert version.startswith("systemd 252 "), (
        "the recorded ratings are systemd 252's (Debian 12); another version weighs the items "
        f"differently: {version.splitlines()[0]}"
    )


def test_every_full_unit_is_recorded() -> None:
    assert {(t.name, golden) for t, golden in RENDERINGS} == set(RECORDED)
    for key, (overall, _) in RECORDED.items():
        assert overall <= HARDENING.EXPOSURE_LIMIT, f"{key}: over the limit"


def test_every_full_unit_rates_within_its_record(tmp_path: Path) -> None:
    rows = []
    over = []
    for template, golden in RENDERINGS:
        path = rendered(template, golden, tmp_path)
        rating = rate(path)
        overall, items = RECORDED[(template.name, golden)]
        rows.append(f"{path.name:<34} {golden:<7} {rating.overall:>7} {rating.items:>6}")
        if rating.overall > overall or rating.items > items:
            open_items = ", ".join(f"{n} {e}" for n, e in rating.open.items())
            over.append(
                f"{path.name} ({golden}): {rating.overall}, {rating.items} > recorded "
                f"{overall}, {items}; open: {open_items}"
            )
    table = "\n".join([f"{'unit':<34} {'render':<7} overall  items", *rows])
    print(table)
    assert not over, "\n".join(over) + "\n" + table


ROUTER = REPO / "roles" / "router" / "templates" / "etc" / "systemd" / "system"


@pytest.mark.parametrize(
    "directive",
    # AmbientCapabilities= is empty, systemd's own default: without it nothing opens.
    [name for name in HARDENING.BASELINE if name != "AmbientCapabilities"],
)
def test_removing_a_baseline_directive_raises_the_rating(tmp_path: Path, directive: str) -> None:
    path = rendered(ROUTER / "hxp-router.service.j2", "sample", tmp_path)
    lines = path.read_text().splitlines()
    kept = [line for line in lines if not line.startswith(f"{directive}=")]
    assert len(kept) < len(lines), f"the router's unit does not state {directive}"
    path.write_text("\n".join(kept) + "\n")
    assert rate(path).items > RECORDED[("hxp-router.service.j2", "sample")][1]
