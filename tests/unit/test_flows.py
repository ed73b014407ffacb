"""The flow matrix follows hxp.yml: every port a service listens on for others has a flow, and
each flow's source is the one component that calls it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from hxp_runtime.config import (
    ConfigError,
    HostGroup,
    cache_address,
    load_config,
    plan_deployment,
    resolve_host,
    router_hosts,
    service_endpoints,
)
from hxp_runtime.flows import CLIENTS, CONTROLLER, allowed, flow_matrix, inbound
from hxp_runtime.render import inventory_files

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "inventory/lab/hxp.yml"
SAMPLE = REPO / "inventory/sample/hxp.yml"
CLI_SCHEMA = json.loads(
    (REPO / "hxp_runtime/data/cli-output.schema.json").read_text(encoding="utf-8")
)


def matrix(path: Path = LAB):  # type: ignore[no-untyped-def]
    cfg = load_config(path)
    return cfg, flow_matrix(cfg, plan_deployment(cfg))


def test_every_listening_port_but_loopback_ones_has_a_flow() -> None:
    cfg, flows = matrix(SAMPLE)
    reached = {(f.destination, f.port) for f in flows}
    cache = cache_address(cfg)
    loopback = {"router admin API"} | ({"redis"} if cache and cache[1].is_loopback else set())
    assert "redis" in loopback  # the sample's Redis is beside the router
    for host, port, label, _ in service_endpoints(cfg):
        if label in loopback:
            continue
        assert (host, port) in reached, (host, port, label)


def test_only_the_router_host_reaches_the_data_plane() -> None:
    cfg, flows = matrix(SAMPLE)
    db, router, metrics = "192.168.10.35", "192.168.10.29", "192.168.10.37"
    assert cfg.database is not None
    assert allowed(flows, router, "hx-postgres-server-01", cfg.database.port)
    assert not allowed(flows, metrics, "hx-postgres-server-01", cfg.database.port)
    assert not allowed(flows, "192.168.10.5", "hx-postgres-server-01", cfg.database.port)
    # vLLM answers the router and Prometheus, nobody else.
    for model_port in (11400, 11404):
        assert allowed(flows, router, "hx-llm-server-01", model_port)
        assert allowed(flows, metrics, "hx-llm-server-01", model_port)
        assert not allowed(flows, db, "hx-llm-server-01", model_port)


@pytest.mark.parametrize("path", [LAB, SAMPLE, REPO / "inventory/lab-scale/hxp.yml"])
def test_pg_hba_admits_exactly_the_hosts_the_firewall_admits_to_postgresql(path: Path) -> None:
    cfg, flows = matrix(path)
    assert cfg.database is not None
    group_all = inventory_files(cfg, plan_deployment(cfg))[Path("group_vars/all/hxp.yml")]
    clients = group_all["hxp_postgresql_allowed_clients"]
    admitted = {
        n
        for f in inbound(flows, resolve_host(cfg, cfg.database.host, HostGroup.DATABASE) or "")
        if f["port"] == cfg.database.port and f["source"] not in (CLIENTS, CONTROLLER)
        for n in f["networks"]
    }
    assert clients and set(clients) == admitted
    # Only the router hosts connect (lab-scale has two, behind a virtual address), each once.
    llm_addresses = {f"{h.address}/32" for h in cfg.hosts_in(HostGroup.LLM)}
    routers = [cfg.host(name) for name in router_hosts(cfg)]
    assert routers and clients == [f"{router.address}/32" for router in routers]
    assert set(clients) <= llm_addresses


def test_client_networks_and_controller_come_from_the_config() -> None:
    _, flows = matrix(SAMPLE)
    assert allowed(flows, "192.168.10.200", "hx-llm-server-01", 8000)
    assert not allowed(flows, "10.1.2.3", "hx-llm-server-01", 8000)
    assert allowed(flows, "192.168.10.5", "hx-postgres-server-01", 22)
    assert not allowed(flows, "192.168.10.6", "hx-postgres-server-01", 22)


def test_a_lab_controller_is_its_gateway() -> None:
    cfg, flows = matrix(LAB)
    ssh = [f for f in flows if f.source == CONTROLLER and f.port == 22]
    assert {f.destination for f in ssh} == {h.name for h in cfg.hosts}
    assert {f.networks for f in ssh} == {("10.77.0.1/32",)}


def test_scrapes_follow_the_prometheus_config() -> None:
    cfg, flows = matrix(LAB)
    group_all = inventory_files(cfg, plan_deployment(cfg))[Path("group_vars/all/hxp.yml")]
    targets = {
        t
        for job in group_all["hxp_prometheus_scrape_configs"]
        for static in job.get("static_configs", [])
        for t in static["targets"]
    }
    # The model servers come from file_sd: every slot a swap may move them to.
    targets |= {
        address
        for server in group_all["hxp_prometheus_vllm_targets"]
        for address in server["slots"].values()
    }
    scraped = {f"{f.address}:{f.port}" for f in flows if f.reason.startswith("Prometheus scrapes")}
    assert scraped == targets
    phi3 = cfg.model("phi3")
    assert cfg.blue_green_wanted(phi3)
    assert {f.port for f in flows if f.reason == "Prometheus scrapes vllm"} >= {
        phi3.port,
        phi3.spare_port,
    }


def test_webhooks_are_egress_and_no_host_admits_them() -> None:
    cfg, flows = matrix(LAB)
    egress = [f for f in flows if f.egress]
    assert [(f.address, f.port) for f in egress] == [("10.77.0.1", 9099)]
    for host in cfg.hosts:
        assert all(rule["port"] != 9099 for rule in inbound(flows, host.name))


def test_narrower_client_networks_reach_the_inventory(tmp_path: Path) -> None:
    text = SAMPLE.read_text(encoding="utf-8").replace(
        "client_networks: [192.168.10.0/24]", "client_networks: [198.51.100.0/24]"
    )
    changed = tmp_path / "hxp.yml"
    changed.write_text(text, encoding="utf-8")
    cfg = load_config(changed)
    host_vars = inventory_files(cfg, plan_deployment(cfg))[
        Path("host_vars/hx-llm-server-01/hxp.yml")
    ]
    public = [r for r in host_vars["hxp_firewall_inbound"] if r["source"] == CLIENTS]
    assert public == [
        {
            "source": CLIENTS,
            "networks": ["198.51.100.0/24"],
            "port": 8000,
            "protocol": "tcp",
            "reason": "OpenAI API",
        }
    ]


def test_an_enabled_firewall_outside_a_lab_needs_the_controller(tmp_path: Path) -> None:
    text = SAMPLE.read_text(encoding="utf-8").replace("  controller: [192.168.10.5/32]\n", "")
    changed = tmp_path / "hxp.yml"
    changed.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"firewall\.controller"):
        load_config(changed)


def test_plan_prints_the_flows_as_json() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "hxp_runtime.cli", "plan", "--flows", "--json", str(LAB)],
        capture_output=True,
        text=True,
        check=True,
    )
    document = json.loads(answer.stdout)
    jsonschema.validate(document, CLI_SCHEMA, cls=jsonschema.Draft202012Validator)
    _, expected = matrix(LAB)
    assert document["result"]["flows"] == [f.as_json() for f in expected]


def test_plan_prints_the_flows_as_a_table() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "hxp_runtime.cli", "plan", "--flows", str(SAMPLE)],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line for line in answer.stdout.splitlines() if "hx-postgres-server-01" in line]
    assert any("5433/tcp" in r and "192.168.10.29/32" in r for r in rows), answer.stdout
    assert any("22/tcp" in r and "192.168.10.5/32" in r for r in rows), answer.stdout
