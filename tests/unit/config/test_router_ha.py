"""Routers behind one virtual address (router.hosts, router.virtual_address): the schema and its
rules, where the routers run and are reached, what render hands role router and Prometheus, and
the flows (VRRP between the router hosts only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hxp_runtime.config import (
    HxpConfig,
    cache_address,
    plan_deployment,
    router_address,
    router_hosts,
)
from hxp_runtime.flows import CLIENTS, VRRP, allowed, flow_matrix, inbound
from hxp_runtime.observability.scrape import scrape_configs
from hxp_runtime.render import inventory_files, rollout_vars, router_vars
from hxp_runtime.status.targets import host_targets
from tests.unit.conftest import Problems, line_of, only

CONFIG = """\
version: 1
name: unit-ha
hosts:
  - {name: llm-1, address: 10.0.0.10, groups: [llm, cache], gpus: [{index: 0, memory_gb: 80}]}
  - {name: llm-2, address: 10.0.0.11, groups: [llm], gpus: [{index: 0, memory_gb: 80}]}
  - {name: db-1, address: 10.0.0.20, groups: [database]}
  - {name: mon-1, address: 10.0.0.30, groups: [metrics]}
models:
  - name: phi3
    preset: phi-3-mini
    hosts: [llm-1, llm-2]
    engine: {dtype: float16, max_model_len: 4096, max_num_seqs: 8}
router:
ROUTER
database:
  router_password: "env:HXP_DB_PASSWORD"
cache:
  password: "env:HXP_REDIS_PASSWORD"
metrics:
  web_password: "env:HXP_WEB_PASSWORD"
  grafana_admin_password: "env:HXP_GRAFANA_PASSWORD"
firewall:
  controller: [10.0.0.1/32]
"""
HA = """\
  hosts: [llm-1, llm-2]
  virtual_address: {address: 10.0.0.100, virtual_router_id: 51}
"""


def config(router: str = HA) -> str:
    return CONFIG.replace("ROUTER\n", router)


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HXP_DB_PASSWORD",
        "HXP_REDIS_PASSWORD",
        "HXP_WEB_PASSWORD",
        "HXP_GRAFANA_PASSWORD",
    ):
        monkeypatch.setenv(name, "a-password-of-twenty-chars")
    monkeypatch.setenv("HXP_ADMIN_KEY", "an-admin-key-of-twenty-chars")


@pytest.fixture
def cfg(load_text: Callable[[str], HxpConfig]) -> HxpConfig:
    return load_text(config())


# --------------------------------------------------------------------------- schema and rules


def test_routers_and_the_address_clients_use(cfg: HxpConfig) -> None:
    assert router_hosts(cfg) == ["llm-1", "llm-2"]
    assert str(router_address(cfg)) == "10.0.0.100"
    # The router on llm-2 shares Redis on llm-1: Redis leaves loopback for the host's address.
    assert cache_address(cfg) is not None and str(cache_address(cfg)[1]) == "10.0.0.10"  # type: ignore[index]


def test_one_router_keeps_router_host(load_text: Callable[[str], HxpConfig]) -> None:
    cfg = load_text(config("  host: llm-2\n"))
    assert router_hosts(cfg) == ["llm-2"]
    assert str(router_address(cfg)) == "10.0.0.11"


def test_host_and_hosts_exclude_each_other(problems_of: Problems) -> None:
    text = config("  host: llm-1\n" + HA)
    p = only(problems_of(text))
    assert p.field == "router.host"
    assert "not both" in p.message
    assert p.line == line_of(text, "host: llm-1")


def test_several_routers_need_a_virtual_address(problems_of: Problems) -> None:
    p = only(problems_of(config("  hosts: [llm-1, llm-2]\n")))
    assert p.field == "router.hosts"
    assert "need router.virtual_address" in p.message


def test_a_virtual_address_needs_router_hosts(problems_of: Problems) -> None:
    text = config("  host: llm-1\n  virtual_address: {address: 10.0.0.100, virtual_router_id: 7}\n")
    p = only(problems_of(text))
    assert p.field == "router.virtual_address"
    assert "list them in router.hosts" in p.message


def test_a_virtual_address_needs_two_router_hosts(problems_of: Problems) -> None:
    p = only(problems_of(config(HA.replace("[llm-1, llm-2]", "[llm-1]"))))
    assert p.field == "router.hosts"
    assert "at least 2" in p.message


def test_a_router_host_listed_twice(problems_of: Problems) -> None:
    p = only(problems_of(config(HA.replace("[llm-1, llm-2]", "[llm-1, llm-2, llm-1]"))))
    assert p.field == "router.hosts[2]"
    assert "listed twice" in p.message


@pytest.mark.parametrize(
    ("hosts", "message"),
    [("[llm-1, db-1]", "not in group 'llm'"), ("[llm-1, llm-9]", "host 'llm-9' is not defined")],
)
def test_router_hosts_are_defined_llm_hosts(
    problems_of: Problems, hosts: str, message: str
) -> None:
    p = only(problems_of(config(HA.replace("[llm-1, llm-2]", hosts))))
    assert p.field == "router.hosts[1]"
    assert message in p.message


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("10.0.0.11", "is the address of host 'llm-2'"),
        ("10.0.1.100", "is not in the network of router hosts llm-1 (10.0.0.10), llm-2"),
        ("10.0.0.255", "network or broadcast address of 10.0.0.0/24"),
    ],
)
def test_the_virtual_address_is_a_free_one_of_the_router_hosts_network(
    problems_of: Problems, address: str, message: str
) -> None:
    p = only(problems_of(config(HA.replace("10.0.0.100", address))))
    assert p.field == "router.virtual_address.address"
    assert message in p.message


@pytest.mark.parametrize("vrid", [0, 256])
def test_the_virtual_router_id_is_1_to_255(problems_of: Problems, vrid: int) -> None:
    p = only(problems_of(config(HA.replace("virtual_router_id: 51", f"virtual_router_id: {vrid}"))))
    assert p.field == "router.virtual_address.virtual_router_id"


def test_a_wider_prefix_admits_router_hosts_of_a_larger_network(
    load_text: Callable[[str], HxpConfig],
) -> None:
    text = config(HA.replace("address: 10.0.0.100,", "address: 10.0.1.100, prefix_length: 16,"))
    assert str(router_address(load_text(text))) == "10.0.1.100"


# --------------------------------------------------------------------------- render and flows


def test_render_hands_role_router_the_hosts_and_the_address(cfg: HxpConfig) -> None:
    rendered = router_vars(cfg, plan_deployment(cfg))
    assert rendered["hxp_router_hosts"] == ["llm-1", "llm-2"]
    assert rendered["hxp_router_virtual_address"] == {
        "address": "10.0.0.100",
        "prefix_length": 24,
        "virtual_router_id": 51,
    }
    settings = rendered["hxp_router_settings"]
    assert settings["listen_host"] == "10.0.0.10"  # the role puts each host's own address there
    assert {"hosts", "virtual_address", "host"}.isdisjoint(settings)
    assert settings["redis"]["host"] == "10.0.0.10"


def test_rolling_restarts_and_swaps_go_through_every_router(
    load_text: Callable[[str], HxpConfig],
) -> None:
    # Each router host keeps its own drains and settings: role vllm drains a restarting server,
    # and switches a swapped one, in each of them.
    with_key = load_text(config(HA + '  admin_key: "env:HXP_ADMIN_KEY"\n'))
    rendered = rollout_vars(with_key, plan_deployment(with_key))
    assert rendered["hxp_vllm_router_hosts"] == ["llm-1", "llm-2"]
    without_key = load_text(config())
    assert rollout_vars(without_key, plan_deployment(without_key))["hxp_vllm_router_hosts"] == []


def test_prometheus_scrapes_every_router_host(cfg: HxpConfig) -> None:
    (job,) = [j for j in scrape_configs(cfg, plan_deployment(cfg)) if j["job_name"] == "router"]
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == ["10.0.0.10:8000", "10.0.0.11:8000"]


def test_vrrp_flows_go_between_the_router_hosts_only(cfg: HxpConfig) -> None:
    flows = flow_matrix(cfg, plan_deployment(cfg))
    vrrp = {(f.source, f.destination, f.networks) for f in flows if f.protocol == VRRP}
    assert vrrp == {
        ("llm-1", "llm-2", ("10.0.0.10/32",)),
        ("llm-2", "llm-1", ("10.0.0.11/32",)),
    }
    # No TCP port opens with them, and nothing else gets them.
    assert not allowed(flows, "10.0.0.11", "llm-1", 0)
    for host in ("db-1", "mon-1"):
        assert all(rule["protocol"] == "tcp" for rule in inbound(flows, host))


def test_both_routers_get_the_clients_and_reach_the_data_plane(cfg: HxpConfig) -> None:
    flows = flow_matrix(cfg, plan_deployment(cfg))
    for router, address in (("llm-1", "10.0.0.10"), ("llm-2", "10.0.0.11")):
        (api,) = [f for f in flows if f.source == CLIENTS and f.destination == router]
        assert "virtual address 10.0.0.100" in api.reason
        assert allowed(flows, address, "db-1", 5433)
        assert allowed(flows, address, "llm-1", 6379)  # Redis on the first router host
    assert not allowed(flows, "10.0.0.30", "llm-1", 6379)


def test_every_router_host_has_its_router_in_status(
    load_text: Callable[[str], HxpConfig],
) -> None:
    cfg = load_text(config(HA + "  admin_key: env:HXP_ADMIN_KEY\n"))
    admin = {t.name for t in host_targets(cfg, plan_deployment(cfg)) if t.router_admin}
    assert admin == {"llm-1", "llm-2"}


def test_the_inventory_lists_vrrp_in_both_router_hosts_firewalls(cfg: HxpConfig) -> None:
    files = inventory_files(cfg, plan_deployment(cfg))
    for host, peer in (("llm-1", "10.0.0.11/32"), ("llm-2", "10.0.0.10/32")):
        rules = files[Path("host_vars", host, "hxp.yml")]["hxp_firewall_inbound"]
        assert [r["networks"] for r in rules if r["protocol"] == VRRP] == [[peer]]
