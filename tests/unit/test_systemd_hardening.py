"""plugins/filter/hxp_systemd_hardening.py: the one hardening baseline of hxp's units.

The filter's behaviour, and every unit template and drop-in of the roles rendered through
Ansible's own templating: each states the baseline through the filter, none restates one of its
directives by hand, and each rendered unit carries the baseline's core.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ansible.errors import AnsibleFilterError
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import filter_loader, init_plugin_loader
from ansible.template import Templar, trust_as_template

from tests.unit.conftest import load_file_module

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugins" / "filter" / "hxp_systemd_hardening.py"
UNIT_TEMPLATES = sorted(
    path
    for path in REPO.glob("roles/*/templates/etc/systemd/system/**/*.j2")
    if not path.name.endswith((".timer.j2", ".socket.j2"))  # no process, nothing to sandbox
)

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


# What the templates read, with values of the right shape; the vLLM unit is rendered for a CPU
# and for a GPU host.
INSTANCE = {
    "name": "m",
    "unit": "hxp-vllm-m",
    "served_name": "m",
    "port": 11400,
    "gpu_ids": [0],
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.9,
    "kv_cache_bytes": 1 << 30,
    "max_model_len": 4096,
    "max_num_seqs": 8,
    "dtype": "auto",
    "quantization": None,
    "kv_cache_dtype": "auto",
    "rope_scaling": None,
    "task": "generate",
    "enable_prefix_caching": True,
    "extra_args": [],
    "memory_limit_gb": 8,
    "cpu_cores": 2,
    "start_order": 0,
    "model_artifact": None,
}


@functools.cache
def _plugins_loaded() -> None:
    """Ansible's plugin loader, once per process (it refuses a second set-up)."""
    init_plugin_loader()
    filter_loader.add_directory(str(PLUGIN.parent))


def _render(template: Path, device: str, **overrides: Any) -> str:
    _plugins_loaded()
    text = template.read_text()
    # Any other variable a unit template reads is a path or a name: a placeholder does.
    variables: dict[str, Any] = {
        name: f"/placeholder/{name}" for name in re.findall(r"\b_?hxp_[a-z0-9_]+", text)
    }
    variables.update(
        ansible_managed="managed",
        ansible_facts={"systemd": {"version": 252}},
        item=INSTANCE,
        hxp_vllm_device=device,
        hxp_vllm_instances=[INSTANCE],
        hxp_vllm_cpu_affinity={},
        hxp_vllm_cpu_kv_cache_min_bytes=1,
        hxp_vllm_start_timeout_s=300,
        _hxp_vllm_model_dirs={"m": "/models/m"},
        hxp_router_settings={"workers": 2},
        _hxp_router_drain_s=30,
    )
    variables.update(overrides)
    templar = Templar(loader=DataLoader(), variables=variables)
    return str(templar.template(trust_as_template(text)))


def test_a_later_server_waits_for_both_slots_of_a_blue_green_one() -> None:
    # Named in both slots, whichever is live: a swap leaves the later server's unit unchanged.
    earlier = {**INSTANCE, "name": "a", "unit": "hxp-vllm-a", "blue_green": True}
    rolling = {**INSTANCE, "name": "b", "unit": "hxp-vllm-b", "start_order": 1}
    later = {**INSTANCE, "start_order": 2}
    template = REPO / "roles/vllm/templates/etc/systemd/system/hxp-vllm.service.j2"
    unit = _render(template, "cpu", item=later, hxp_vllm_instances=[earlier, rolling, later])
    after = next(line for line in unit.splitlines() if line.startswith("After="))
    assert after == (
        "After=network-online.target hxp-vllm-a.service hxp-vllm-a-green.service hxp-vllm-b.service"
    )


# Only role vllm's units depend on the host's device.
RENDERINGS = [(t, "cpu") for t in UNIT_TEMPLATES] + [
    (t, "cuda") for t in UNIT_TEMPLATES if t.relative_to(REPO).parts[1] == "vllm"
]


@pytest.mark.parametrize(
    ("template", "device"),
    RENDERINGS,
    ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v,
)
def test_every_rendered_unit_carries_the_core(
    plugin: ModuleType, template: Path, device: str
) -> None:
    lines = _render(template, device).splitlines()
    for name, value in plugin.CORE.items():
        assert lines.count(f"{name}={value}") == 1, f"{template.name}: {name}"
    if template.name == "hxp-vllm.service.j2":
        # CPU: no devices at all; GPU: the NVIDIA devices only.
        assert ("PrivateDevices=true" in lines) == (device == "cpu")
        assert ("DevicePolicy=closed" in lines) == (device == "cuda")
        assert "MemoryDenyWriteExecute=true" not in lines
