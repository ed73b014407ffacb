"""plugins/filter/hxp_systemd_hardening.py: the one hardening baseline of hxp's units.

The filter's behaviour, and every unit template and drop-in of the roles rendered through
Ansible's own templating: each states the baseline through the filter, none restates one of its
directives by hand, and each rendered unit carries the baseline's core.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError

from tests.unit.conftest import load_file_module
from tests.unit.unit_templates import DEVICES, FILTER_PLUGINS, REPO, UNIT_TEMPLATES, render, role

PLUGIN = FILTER_PLUGINS / "hxp_systemd_hardening.py"

Hardening = Callable[..., str]


@pytest.fixture(scope="module")
def plugin() -> ModuleType:
    return load_file_module("hxp_systemd_hardening", PLUGIN)


@pytest.fixture(scope="module")
def hardening(plugin: ModuleType) -> Hardening:
    return plugin.FilterModule().filters()["hxp_systemd_hardening"]  # type: ignore[no-any-return]


def test_no_changes_give_the_whole_baseline_in_order(plugin: ModuleType, hardening: Hardening):
    lines = hardening({}).splitlines()
    assert lines == [f"{name}={value}" for name, value in plugin.BASELINE.items()]
    assert lines[:5] == [
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        "CapabilityBoundingSet=",
    ]
    assert hardening(None) == hardening({})


def test_changes_apply_in_place_and_additions_follow(hardening: Hardening) -> None:
    lines = hardening(
        {
            "RestrictAddressFamilies": "AF_UNIX",
            "MemoryDenyWriteExecute": None,
            "ReadWritePaths": ["", "/var/lib/x"],
            "SystemCallFilter": ["@system-service", "~@privileged"],
            "RemoveIPC": True,
            "PrivateNetwork": False,
        }
    ).splitlines()
    assert "RestrictAddressFamilies=AF_UNIX" in lines
    assert not any(line.startswith("MemoryDenyWriteExecute=") for line in lines)
    filters = [line for line in lines if line.startswith("SystemCallFilter=")]
    assert filters == ["SystemCallFilter=@system-service", "SystemCallFilter=~@privileged"]
    # Directives the baseline lacks come last, in the order given.
    assert lines[-4:] == [
        "ReadWritePaths=",
        "ReadWritePaths=/var/lib/x",
        "RemoveIPC=true",
        "PrivateNetwork=false",
    ]


def test_core_only_for_a_debian_unit_with_its_own_sandbox(
    plugin: ModuleType, hardening: Hardening
) -> None:
    lines = hardening({"ReadWritePaths": "/var/lib/redis"}, False).splitlines()
    assert lines == [
        *(f"{name}={value}" for name, value in plugin.CORE.items()),
        "ReadWritePaths=/var/lib/redis",
    ]


def test_a_network_daemon_keeps_only_the_capabilities_it_names(hardening: Hardening) -> None:
    lines = hardening({}, True, ["CAP_NET_ADMIN", "CAP_NET_RAW"]).splitlines()
    assert "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW" in lines
    assert "CapabilityBoundingSet=" not in lines
    assert "NoNewPrivileges=true" in lines and "ProtectSystem=strict" in lines
    with pytest.raises(AnsibleFilterError, match="CAP_SYS_ADMIN may not be kept"):
        hardening({}, True, ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"NoNewPrivileges": None}, "NoNewPrivileges=true holds for every hxp unit"),
        ({"ProtectSystem": "full"}, "ProtectSystem=strict holds for every hxp unit"),
        ({"CapabilityBoundingSet": "CAP_NET_BIND_SERVICE"}, "cannot change or drop it"),
        ({"ReadWritePaths": None}, "ReadWritePaths is not in the baseline here"),
        ({"ReadWritePaths": "/a\nExecStart=/bin/sh"}, "is not a one-line string"),
        ({"DeviceAllow": [{"path": "/dev/x"}]}, "is not a one-line string"),
    ],
)
def test_refuses_what_would_weaken_or_corrupt_the_unit(
    hardening: Hardening, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        hardening(changes)


def test_systemctl_show_spelling_of_the_core(plugin: ModuleType) -> None:
    shown = {name: plugin.shown(value) for name, value in plugin.CORE.items()}
    assert shown == {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }


def test_unit_templates_are_found() -> None:
    names = {path.name for path in UNIT_TEMPLATES}
    assert {"hxp-router.service.j2", "hxp-vllm.service.j2", "hxp-hardening.conf.j2"} <= names


@pytest.mark.parametrize("template", UNIT_TEMPLATES, ids=lambda p: str(p.relative_to(REPO)))
def test_templates_state_the_baseline_only_through_the_filter(
    plugin: ModuleType, template: Path
) -> None:
    text = template.read_text()
    assert text.count("| hxp_systemd_hardening") == 1, f"{template.name}: use the filter once"
    restated = [
        line
        for line in text.splitlines()
        if re.match(r"^([A-Za-z]+)=", line) and line.split("=", 1)[0] in plugin.BASELINE
    ]
    assert not restated, f"{template.name} restates the baseline: {restated}"


# Only role vllm's units depend on the host's device: rendered for the lab (CPU) and the sample
# (GPU) inventory.
RENDERINGS = [(t, "lab") for t in UNIT_TEMPLATES] + [
    (t, "sample") for t in UNIT_TEMPLATES if role(t) == "vllm"
]


@pytest.mark.parametrize(
    ("template", "golden"),
    RENDERINGS,
    ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v,
)
def test_every_rendered_unit_carries_the_core(
    plugin: ModuleType, template: Path, golden: str
) -> None:
    device = DEVICES[golden]
    lines = render(template, golden).splitlines()
    for name, value in plugin.CORE.items():
        if name == "CapabilityBoundingSet":
            # Empty, or only what the filter lets a network daemon keep (keepalived's drop-in).
            (kept,) = [line for line in lines if line.startswith(f"{name}=")]
            assert set(kept.split("=", 1)[1].split()) <= plugin.PRIVILEGED_CAPABILITIES, kept
            continue
        assert lines.count(f"{name}={value}") == 1, f"{template.name}: {name}"
    if template.name == "hxp-vllm.service.j2":
        # CPU: no devices at all; GPU: the NVIDIA devices only.
        assert ("PrivateDevices=true" in lines) == (device == "cpu")
        assert ("DevicePolicy=closed" in lines) == (device == "cuda")
        assert "MemoryDenyWriteExecute=true" not in lines
