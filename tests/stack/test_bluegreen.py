"""Blue-green swaps of a model's version on the lab under load: the new version starts beside
the old and takes over without a failed request; a new version that cannot load is rolled back
while the old one serves on.

Slow (minutes: a vLLM server starts for each swap, and once more to put the original back).
Run it alone, with the branch deployed first (`hxp deploy inventory/lab/hxp.yml --limit llm`)::

    pytest -m "" -s -p no:cacheprovider tests/stack/test_bluegreen.py

The lab's phi3 swaps blue-green (inventory/lab/hxp.yml); inventory/lab/bundle.yml holds its
other versions: tiny-phi3-v2 (other weights) and tiny-phi3-broken (an architecture vLLM lacks).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import testinfra
import yaml

from hxp_runtime.config import HostGroup, HxpConfig, plan_deployment, plan_swaps, resolve_host
from hxp_runtime.lab import load_lab
from tests.stack.conftest import Prometheus, host_in, http_on
from tests.stack.router import CONFIG
from tests.stack.test_operations import hxp_deploy, load_while

pytestmark = pytest.mark.slow
MODEL = "phi3"
NEW_VERSION = "tiny-phi3-v2"
BROKEN_VERSION = "tiny-phi3-broken"
ROUTER_ADMIN = "/opt/hxp/router/bin/hxp-router admin"
# Both slots of MODEL read the same env file (roles/vllm/tasks/configure.yml).
MODEL_ENV = f"/etc/hxp/vllm/{MODEL}.env"
# Prometheus notices a changed file_sd file within seconds and scrapes a new target within one
# scrape interval (5 s in the lab); this leaves room for a loaded host.
TARGET_WITHIN_S = 60


def with_version(copy: Path, artifact: str) -> None:
    """Write ``copy``: the lab's hxp.yml with MODEL's source set to ``artifact``."""
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    model = next(m for m in data["models"] if m["name"] == MODEL)
    model["source"] = {"artifact": artifact}
    copy.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def served_root(cfg: HxpConfig, port: int) -> str | None:
    """The model directory the server on ``port`` of the LLM host serves (/v1/models' root),
    or None when nothing answers there. Asked from the LLM host, as the router asks it: the
    firewall admits a model server's port from no other client."""
    name = resolve_host(cfg, cfg.model(MODEL).host, HostGroup.LLM)
    assert name is not None
    llm = testinfra.get_host(
        f"ansible://{name}", ansible_inventory=str(load_lab(CONFIG).inventory_file)
    )
    try:
        models = http_on(llm, f"{llm_url(cfg)}:{port}/v1/models", env_file=MODEL_ENV)
    except (urllib.error.URLError, ConnectionError):
        return None
    return str(json.loads(models)["data"][0]["root"])


def llm_url(cfg: HxpConfig) -> str:
    """http://ADDRESS of the host MODEL runs on."""
    name = resolve_host(cfg, cfg.model(MODEL).host, HostGroup.LLM)
    assert name is not None
    return f"http://{cfg.host(name).address}"


def live_slot(llm: testinfra.host.Host) -> dict:
    return json.loads(llm.file(f"/etc/hxp/vllm/{MODEL}.slot.json").content_string)


def router_urls(llm: testinfra.host.Host) -> list[str]:
    answer = llm.check_output(f"{ROUTER_ADMIN} backends")
    return json.loads(answer)["backends"][MODEL]["urls"]


def prometheus_targets(prometheus: Prometheus, port: int) -> list[dict]:
    """Prometheus's vllm targets of MODEL (port, slot label, health), once there is one, scraped
    at ``port`` and up, or as they are after TARGET_WITHIN_S."""
    deadline = time.monotonic() + TARGET_WITHIN_S
    while True:
        targets = [
            {
                "port": urlsplit(t["scrapeUrl"]).port,
                "slot": t["labels"].get("slot"),
                "health": t["health"],
                "error": t["lastError"],
            }
            for t in prometheus.get("/api/v1/targets")["activeTargets"]
            if t["labels"].get("service") == "vllm" and t["labels"].get("model") == MODEL
        ]
        live = [t["port"] == port and t["health"] == "up" for t in targets]
        if live == [True] or time.monotonic() > deadline:
            return targets
        time.sleep(1)


def scraped(targets: list[dict]) -> list[tuple[int, str, str]]:
    return [(t["port"], t["slot"], t["health"]) for t in targets]


def unit_of(slot: str) -> str:
    return f"hxp-vllm-{MODEL}" if slot == "blue" else f"hxp-vllm-{MODEL}-green"


def summary(what: str, took_s: float, report: dict) -> str:
    return (
        f"{what}: deploy {took_s:.0f}s; {report['sent']} requests on {MODEL} in "
        f"{report['windows']} windows, {report['ok']} ok, failed {dict(report['failed'])}, "
        f"by backend {dict(report['by_backend'])}"
    )


def swap_to_new_version(
    cfg: HxpConfig,
    llm: testinfra.host.Host,
    prometheus: Prometheus,
    copy: Path,
    ports: dict[str, int],
    old_slot: str,
) -> dict:
    """Deploy NEW_VERSION under load on MODEL; what came of it."""
    new_slot = "green" if old_slot == "blue" else "blue"
    with_version(copy, NEW_VERSION)
    deploy = hxp_deploy(copy)
    load = load_while(cfg, deploy, [MODEL])
    took_s = deploy.finished()
    seen = {
        "load": load,
        "root": served_root(cfg, ports[new_slot]),
        "record": live_slot(llm),
        "urls": router_urls(llm),
        "old_running": llm.service(unit_of(old_slot)).is_running,
        "targets": prometheus_targets(prometheus, ports[new_slot]),
    }
    print(f"\n{summary(f'blue-green swap {old_slot} -> {new_slot}', took_s, load)}")
    print(
        f"served from {seen['root']} on port {ports[new_slot]}; slot record {seen['record']}; "
        f"router URLs {seen['urls']}; old unit running: {seen['old_running']}; "
        f"Prometheus's targets {seen['targets']}"
    )
    idempotent_s = hxp_deploy(copy, "--expect-no-changes").finished()
    print(f"--expect-no-changes after the swap {idempotent_s:.0f}s")
    return seen


def swap_to_broken_version(
    cfg: HxpConfig,
    llm: testinfra.host.Host,
    prometheus: Prometheus,
    copy: Path,
    ports: dict[str, int],
    live: str,
) -> dict:
    """Deploy BROKEN_VERSION under load on MODEL (live in slot ``live``); what came of it."""
    idle = "green" if live == "blue" else "blue"
    with_version(copy, BROKEN_VERSION)
    deploy = hxp_deploy(copy)
    load = load_while(cfg, deploy, [MODEL])
    took_s, output = deploy.failed()
    said = output.find(f"model {MODEL}: the new version")
    message = output[said : said + 700] if said >= 0 else output[-3000:]
    print(summary("rolled back swap to a broken version", took_s, load))
    print(f"deploy said: {message}")
    targets = prometheus_targets(prometheus, ports[live])
    print(f"Prometheus's targets after the rollback {targets}")
    return {
        "targets": targets,
        "load": load,
        "message": message,
        "root": served_root(cfg, ports[live]),
        "running": llm.service(unit_of(live)).is_running,
        "idle_unit_file": llm.file(f"/etc/systemd/system/{unit_of(idle)}.service").exists,
        "idle_answers": served_root(cfg, ports[idle]) is not None,
        "urls": router_urls(llm),
    }


def assert_served_by_model_alone(load: dict) -> None:
    # 429: the lab key's rate limit answering a load tool that sends flat out, at admission,
    # before any backend is chosen; it says nothing about the swap. Anything else failed.
    failed = {cause: n for cause, n in load["failed"].items() if cause != "http_429"}
    assert failed == {}, [f for f in load["failures"] if f["cause"] != "http_429"]
    assert load["ok"] > 0
    # Every request was answered by MODEL itself, none by a fallback model.
    assert set(load["by_backend"]) == {MODEL}, load["by_backend"]


# Two model versions started, swapped and rolled back: about 30 minutes on a 2-core controller.
@pytest.mark.timeout(3600)
def test_blue_green_swap_and_rollback_under_load(
    cfg: HxpConfig,
    hosts: dict[str, testinfra.host.Host],
    prometheus: Prometheus,
    config_copy: Path,
) -> None:
    model = cfg.model(MODEL)
    assert plan_swaps(cfg, plan_deployment(cfg))[MODEL].blue_green, "the lab's phi3 must swap"
    llm = host_in(cfg, hosts, HostGroup.LLM)
    ports = {"blue": model.port, "green": model.spare_port}
    old_slot = live_slot(llm)["slot"]
    new_slot = "green" if old_slot == "blue" else "blue"
    old_root = served_root(cfg, ports[old_slot])
    assert old_root is not None, f"{MODEL} does not answer on port {ports[old_slot]}"
    try:
        swapped = swap_to_new_version(cfg, llm, prometheus, config_copy, ports, old_slot)
        rolled_back = swap_to_broken_version(cfg, llm, prometheus, config_copy, ports, new_slot)
    finally:
        # scripts/test removes its lab right after: putting the original back there would
        # start a server again for nothing.
        if os.environ.get("HXP_STACK_DISPOSABLE") != "1":
            restored_s = hxp_deploy(CONFIG).finished()
            print(f"the original deployed back (a swap back) {restored_s:.0f}s")

    assert_served_by_model_alone(swapped["load"])
    assert swapped["root"] not in (None, old_root) and NEW_VERSION in swapped["root"]
    assert swapped["record"]["slot"] == new_slot and NEW_VERSION in swapped["record"]["version"]
    assert swapped["urls"] == [f"{llm_url(cfg)}:{ports[new_slot]}"]
    assert not swapped["old_running"], f"{unit_of(old_slot)} still runs after the swap"
    # Prometheus follows the swap: one target for MODEL, on the new slot's port, and up.
    assert scraped(swapped["targets"]) == [(ports[new_slot], new_slot, "up")], swapped["targets"]

    assert_served_by_model_alone(rolled_back["load"])
    message = rolled_back["message"]
    assert f"the new version (artifact {BROKEN_VERSION}" in message, message
    assert "still serves on port" in message and NEW_VERSION in message, message
    assert rolled_back["running"] and rolled_back["root"] == swapped["root"]
    assert not rolled_back["idle_unit_file"] and not rolled_back["idle_answers"]
    assert rolled_back["urls"] == swapped["urls"]
    # The rollback left Prometheus on the slot that still serves.
    assert scraped(rolled_back["targets"]) == [(ports[new_slot], new_slot, "up")], rolled_back[
        "targets"
    ]
