"""Prometheus's targets of the model servers follow the live blue-green slot: what render writes
for them (hxp_runtime/observability/scrape.py) and how the filter hxp_vllm_live_targets puts
each server at the slot its record names (roles prometheus and vllm write the file_sd files)."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from hxp_runtime.config import HostGroup, HxpConfig, load_config, plan_deployment
from hxp_runtime.observability.scrape import FILE_SD_DIR, scrape_configs
from hxp_runtime.render import inventory_files
from tests.unit.conftest import BASE, load_file_module

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "inventory/lab/hxp.yml"
LLM_HOST = "hx-llm-server-01"
slots = load_file_module("hxp_vllm_slots", REPO / "plugins/filter/hxp_vllm_slots.py")


def rendered(cfg: HxpConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(group_vars/all, host_vars of the LLM host) as render writes them for ``cfg``."""
    files = inventory_files(cfg, plan_deployment(cfg))
    host = cfg.hosts_in(HostGroup.LLM)[0].name
    return files[Path("group_vars/all/hxp.yml")], files[Path("host_vars", host, "hxp.yml")]


def lab() -> tuple[HxpConfig, dict[str, Any], dict[str, Any]]:
    cfg = load_config(LAB)
    return (cfg, *rendered(cfg))


def record(slot: str) -> dict[str, str]:
    return {"slot": slot, "version": "artifact tiny-phi3 seed-0 sha256 0123456789ab"}


def file_sd(group_all: dict[str, Any], records: dict[str, Any]) -> dict[str, list[Any]]:
    """File -> its content, as role prometheus writes them (groupby file, then the filter)."""
    files: dict[str, list[Any]] = {}
    for target in group_all["hxp_prometheus_vllm_targets"]:
        files.setdefault(target["file"], []).append(target)
    return {file: slots.hxp_vllm_live_targets(ts, records) for file, ts in files.items()}


def by_model(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {g["labels"]["model"]: g for g in groups}


def test_without_records_every_server_is_scraped_on_its_port_in_slot_blue() -> None:
    cfg, group_all, _ = lab()
    [(file, groups)] = file_sd(group_all, {}).items()
    assert file == f"/etc/prometheus/file_sd/vllm-{LLM_HOST}.json"
    address = str(cfg.host(LLM_HOST).address)
    assert {model: g["targets"] for model, g in by_model(groups).items()} == {
        m.name: [f"{address}:{m.port}"] for m in cfg.models
    }
    # The labels alerts and dashboards select on stay as they were; slot is added.
    assert by_model(groups)["phi3"]["labels"] == {
        "host": LLM_HOST,
        "service": "vllm",
        "model": "phi3",
        "slot": "blue",
    }


def test_a_server_swapped_into_green_is_scraped_on_its_spare_port_and_back() -> None:
    cfg, group_all, _ = lab()
    phi3 = cfg.model("phi3")
    address = str(cfg.host(LLM_HOST).address)
    [groups] = file_sd(group_all, {LLM_HOST: {"phi3": record("green")}}).values()
    green = by_model(groups)["phi3"]
    assert green["targets"] == [f"{address}:{phi3.spare_port}"]
    assert green["labels"]["slot"] == "green"
    # The next swap goes back to blue: the model's port again.
    [groups] = file_sd(group_all, {LLM_HOST: {"phi3": record("blue")}}).values()
    assert by_model(groups)["phi3"]["targets"] == [f"{address}:{phi3.port}"]
    # Records of another host's servers of the same name do not move these.
    [groups] = file_sd(group_all, {"hx-other-01": {"phi3": record("green")}}).values()
    assert by_model(groups)["phi3"]["labels"]["slot"] == "blue"


def test_a_model_without_blue_green_stays_on_its_port() -> None:
    cfg, group_all, _ = lab()
    hermes = cfg.model("hermes")
    assert not cfg.blue_green_wanted(hermes)
    [target] = [t for t in group_all["hxp_prometheus_vllm_targets"] if t["name"] == "hermes"]
    assert set(target["slots"]) == {"blue"}
    # Even a stale green record (blue-green turned off since): no spare port, no target there.
    [groups] = file_sd(group_all, {LLM_HOST: {"hermes": record("green")}}).values()
    hermes_group = by_model(groups)["hermes"]
    assert hermes_group["targets"] == [f"{cfg.host(LLM_HOST).address}:{hermes.port}"]
    assert hermes_group["labels"]["slot"] == "blue"


def test_role_vllm_writes_the_same_file_as_role_prometheus() -> None:
    # After a swap role vllm writes its host's file; the metrics play writes it again from the
    # records: the same bytes, or a second deploy would change it.
    _, group_all, host_vars = lab()
    records = {"phi3": record("green")}
    [(file, from_prometheus)] = file_sd(group_all, {LLM_HOST: records}).items()
    assert host_vars["hxp_vllm_scrape_targets_file"] == file
    assert host_vars["hxp_vllm_metrics_host"] == "hx-metrics-server-01"
    from_vllm = slots.hxp_vllm_live_targets(
        host_vars["hxp_vllm_scrape_targets"], {LLM_HOST: records}
    )
    assert json.dumps(from_vllm, sort_keys=True) == json.dumps(from_prometheus, sort_keys=True)


def test_the_vllm_job_reads_every_host_file() -> None:
    _, group_all, _ = lab()
    [job] = [j for j in group_all["hxp_prometheus_scrape_configs"] if j["job_name"] == "vllm"]
    assert "static_configs" not in job
    [sd] = job["file_sd_configs"]
    [pattern] = sd["files"]
    files = {t["file"] for t in group_all["hxp_prometheus_vllm_targets"]}
    assert files and all(fnmatch.fnmatch(f, pattern) for f in files)
    assert not fnmatch.fnmatch("/etc/prometheus/file_sd/node.json", pattern)
    # Role prometheus creates that directory and removes files there of hosts that left.
    role_vars = yaml.safe_load((REPO / "roles/prometheus/vars/main.yml").read_text("utf-8"))
    assert role_vars["_hxp_prometheus_file_sd_dir"] == FILE_SD_DIR
    assert all(Path(f).parent == Path(FILE_SD_DIR) for f in files)


def test_the_swap_moves_the_target_only_after_the_router_switched() -> None:
    # A rolled-back swap fails inside the block that starts the new version (its rescue stops
    # it): the target is written only after that block and the router's reload, so a rollback
    # leaves it on the old, live slot.
    tasks = yaml.safe_load((REPO / "roles/vllm/tasks/swap.yml").read_text(encoding="utf-8"))
    names = [t["name"] for t in tasks]
    start = next(i for i, n in enumerate(names) if n.startswith("Start the new version"))
    switch = next(i for i, n in enumerate(names) if n.startswith("Switch the router"))
    move = next(i for i, n in enumerate(names) if n.startswith("Move Prometheus's target"))
    wait = next(i for i, n in enumerate(names) if n.startswith("Wait until every router worker"))
    assert "rescue" in tasks[start]
    assert start < switch < move < wait
    written = [t for t in tasks[move]["block"] if "ansible.builtin.copy" in t]
    assert written and "hxp_vllm_live_targets" in written[0]["ansible.builtin.copy"]["content"]
    assert "Reload the router" in tasks[switch]["block"][-1]["name"]


def test_without_a_metrics_host_nothing_is_scraped_or_moved(
    load_text: Callable[[str], HxpConfig],
) -> None:
    blue_green = "  - name: phi3\n    rollout: {strategy: blue-green}\n"
    admin = 'router:\n  admin_key: "env:HXP_ADMIN_KEY"\n'
    cfg = load_text(BASE.replace("  - name: phi3\n", blue_green).replace("router:\n", admin))
    assert cfg.metrics is None and cfg.blue_green_wanted(cfg.model("phi3"))
    group_all, host_vars = rendered(cfg)
    assert scrape_configs(cfg, plan_deployment(cfg)) == []
    assert "hxp_prometheus_vllm_targets" not in group_all
    assert host_vars["hxp_vllm_metrics_host"] is None
    assert host_vars["hxp_vllm_scrape_targets_file"] is None
    assert host_vars["hxp_vllm_scrape_targets"] == []
