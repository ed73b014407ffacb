"""`hxp render` of inventory/sample and inventory/lab still writes the golden files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.golden import (
    CHECKOUT,
    CONFIGS,
    REPO,
    UPDATE_COMMAND,
    differences,
    golden_files,
    normalise,
    render,
)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_render_matches_the_golden_files(name: str, tmp_path: Path) -> None:
    found = differences(name, render(name, tmp_path))
    assert not found, (
        "\n".join(found) + f"\n{len(found)} file(s) differ. If the change is intended, run "
        f"`{UPDATE_COMMAND}` and commit tests/golden."
    )


def test_the_lab_bundle_path_is_written_relative_to_the_checkout() -> None:
    group_vars = golden_files("lab")["group_vars/all/hxp.yml"]
    assert f"hxp_bundle_path: {CHECKOUT}/.cache/bundle-lab\n" in group_vars
    for name in CONFIGS:
        for relative, text in golden_files(name).items():
            assert str(REPO) not in text, f"tests/golden/{name}/{relative} names the checkout"


def test_normalise_maps_the_checkout_and_the_targets_of_its_links(tmp_path: Path) -> None:
    checkout, elsewhere = tmp_path / "checkout", tmp_path / "elsewhere"
    (elsewhere / "cache").mkdir(parents=True)
    checkout.mkdir()
    (checkout / ".cache").symlink_to(elsewhere / "cache")
    text = f"a: {checkout}/inventory\nb: {elsewhere}/cache/bundle-lab\nc: {elsewhere}/other\n"
    assert normalise(text, checkout) == (
        f"a: {CHECKOUT}/inventory\nb: {CHECKOUT}/.cache/bundle-lab\nc: {elsewhere}/other\n"
    )


def test_a_changed_file_is_reported_with_its_diff(tmp_path: Path) -> None:
    rendered = render("sample", tmp_path)
    rendered["hosts.yml"] = rendered["hosts.yml"].replace("ansible_port: 22", "ansible_port: 2222")
    del rendered["host_vars/hx-metrics-server-01/hxp.yml"]
    rendered["host_vars/new-host/hxp.yml"] = "---\n"
    found = differences("sample", rendered)
    assert len(found) == 3
    changed = next(f for f in found if "hosts.yml (golden)" in f)
    assert "-      ansible_port: 22\n" in changed and "+      ansible_port: 2222\n" in changed
    assert any("hx-metrics-server-01/hxp.yml: render no longer writes" in f for f in found)
    assert any("new-host/hxp.yml: render writes this file" in f for f in found)
