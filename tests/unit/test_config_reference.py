"""docs/config-reference.md is current, and what it says is measured, not assumed."""

from __future__ import annotations

from pathlib import Path

import pytest

from hxp_runtime import config_reference as ref

REPO = Path(__file__).resolve().parents[2]


# Renders the configs again for every key changed alone: about four seconds of CPU, so the tests
# that use it are marked slow.
@pytest.fixture(scope="module")
def entries() -> dict[str, ref.Entry]:
    return {e.key.name: e for e in ref.entries(REPO)}


@pytest.mark.slow
def test_the_page_is_current(entries: dict[str, ref.Entry]) -> None:
    page = (REPO / ref.PAGE).read_text(encoding="utf-8")
    assert ref.page(list(entries.values())) == page, (
        f"{ref.PAGE} is out of date: run `{ref.COMMAND}` (or scripts/regenerate) and commit it"
    )


def test_every_leaf_of_the_schema_is_a_key_and_secrets_are_leaves() -> None:
    names = [k.name for k in ref.schema_keys()]
    assert names == sorted(names)
    assert {"router.port", "models[].engine.dtype", "router.categories.<name>.examples"} <= set(
        names
    )
    assert "cache.password" in names and "cache.password.scheme" not in names


@pytest.mark.slow
def test_router_port_reaches_the_router_settings_file(entries: dict[str, ref.Entry]) -> None:
    entry = entries["router.port"]
    assert entry.measured.change == (
        Path("inventory/sample/hxp.yml"),
        ("router", "port"),
        8000,
        7999,  # 8001 is taken: the router's admin port on the same host
    )
    assert entry.measured.variables["hxp_router_settings"] == {".port"}
    assert "hxp_host_listen_ports" in entry.measured.variables
    settings = {u.template: u.dests for u in entry.uses["hxp_router_settings"] if u.template}
    assert settings["roles/router/templates/etc/hxp-router/settings.yml.j2"] == (
        "/etc/hxp-router/settings.yml",
    )
    # Through _hxp_router_port (roles/router/vars): the unit names the port too.
    assert "roles/router/templates/etc/systemd/system/hxp-router.service.j2" in settings


@pytest.mark.slow
def test_a_section_a_config_leaves_out_is_added_to_measure_its_keys(
    entries: dict[str, ref.Entry],
) -> None:
    # inventory/sample/hxp.yml has no router.rate_limit section: the schema's default applies.
    entry = entries["router.rate_limit.requests_per_minute"]
    assert entry.measured.change is not None
    assert entry.measured.change[2:] == (600, 601)
    assert entry.measured.variables == {"hxp_router_settings": {".rate_limit"}}


@pytest.mark.slow
def test_keys_that_reach_nothing_or_cannot_change_alone_say_so(
    entries: dict[str, ref.Entry],
) -> None:
    # The lab's own settings are read by `hxp lab`, never rendered.
    assert entries["lab.bridge"].measured.change is not None
    assert entries["lab.bridge"].measured.variables == {}
    assert "- Reaches: nothing `hxp render` writes" in ref.entry_text(entries["lab.bridge"])
    # A model's name is referenced by fallbacks and the semantic router in both configs.
    assert entries["models[].name"].measured.change is None
    assert "not measured" in ref.entry_text(entries["models[].name"])


def test_looped_templates_and_their_destinations_are_found() -> None:
    roles = {r.name: r for r in ref.load_roles(REPO)}
    uses = ref.uses("hxp_vllm_instances", list(roles.values()), {})
    dests = {u.template: u.dests for u in uses if u.template}
    assert dests["roles/vllm/templates/etc/systemd/system/hxp-vllm.service.j2"] == (
        "/etc/systemd/system/{{ item.unit }}.service",
    )
    # src: etc/systemd/system/{{ item }}.service.d/... matched, item filled in from the path.
    hardening = "roles/postgresql/templates/etc/systemd/system/postgresql@.service.d/"
    assert ref.destinations(roles["postgresql"], hardening + "hxp-hardening.conf.j2") == [
        "/etc/systemd/system/postgresql@.service.d/hxp-hardening.conf"
    ]


def test_one_key_is_printed_and_an_unknown_key_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert ref.main(["--key", "models[2].engine.dtype"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("### `models[].engine.dtype`\n")
    assert "`hxp_vllm_instances` (`[].dtype`)" in printed
    assert ref.main(["--key", "router.prot"]) == 2
    assert "did you mean router.port" in capsys.readouterr().err
