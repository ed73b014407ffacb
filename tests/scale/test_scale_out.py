"""Scale-out on a lab with several LLM hosts: the router spreads each replicated model's
requests over the hosts that run it, and an LLM host powered off under load fails no request
for a model with a replica on another host; booted again, its replicas take requests again.
With a router on each LLM host (behind a virtual address), a rolling restart of a replicated
model drains each replica in every router first: load through each router fails nothing.

Needs the lab of inventory/lab-scale/hxp.yml deployed (README, "Replicas on several LLM hosts")::

    hxp lab up inventory/lab-scale/hxp.yml && hxp deploy inventory/lab-scale/hxp.yml
    HXP_STACK_CONFIG=inventory/lab-scale/hxp.yml pytest -m "" tests/scale -rP -s

Each request is counted three ways: by the load tool (the router's x-hxp-backend header), by
the router's own hxp_router_requests_total, and by each model server's
vllm:request_success_total, read on the host that runs it.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hxp_runtime.config import HostGroup, HxpConfig, load_config, plan_deployment, router_hosts
from hxp_runtime.lab import BaseImage, Lab, load_lab
from hxp_runtime.loadtest import timeline_lines
from tests.stack.conftest import http_on
from tests.stack.load import start_load
from tests.stack.router import CONFIG, REPO, router_ca, router_host_url, router_url
from tests.stack.test_admin import admin
from tests.stack.test_operations import hxp_deploy

pytestmark = pytest.mark.slow
Hosts = dict[str, testinfra.host.Host]

CONCURRENCY = 8
SPREAD_LOAD_S = 20.0
# A replica serves "a real share" of its model's requests: at least this part of an even split.
MIN_SHARE_OF_EVEN = 0.5
# The outage: load for OUTAGE_LOAD_S, the host powered off POWER_OFF_AT_S into it.
OUTAGE_LOAD_S = 60.0
POWER_OFF_AT_S = 15.0
# The router's health checks (every 10 s by default, two failures to eject) bound how long it
# takes to drop a dead backend; its circuit breaker, under load, is faster.
OUT_OF_ROTATION_WITHIN_S = 45.0
# Booting the host is seconds; its model servers on CPU take about a minute to be ready, more
# on a busy machine.
BACK_IN_ROTATION_WITHIN_S = 420.0
WINDOW_S = 5.0
POLL_S = 0.5


@dataclass(frozen=True)
class Replica:
    """One model server: the router's backend id for it and where it runs."""

    model: str
    backend: str  # the model's name, name-2, ... (hxp_runtime.planner.Plan.backend_ids)
    host: str
    address: str
    port: int


@dataclass(frozen=True)
class Layout:
    replicas: tuple[Replica, ...]
    models: tuple[str, ...]  # the models with replicas on more than one host
    routers: tuple[str, ...]  # the router hosts; the first holds the virtual address, if any
    victim: str  # the LLM host powered off: one whose router (if any) holds no client address

    def of_model(self, model: str) -> list[Replica]:
        return [r for r in self.replicas if r.model == model]

    def on_victim(self) -> list[str]:
        return [r.backend for r in self.replicas if r.host == self.victim]


@pytest.fixture(scope="module")
def layout(cfg: HxpConfig) -> Layout:
    plan = plan_deployment(cfg)
    ids = plan.backend_ids()
    replicas = tuple(
        Replica(i.model, ids[i.host, i.port], i.host, str(cfg.host(i.host).address), i.port)
        for i in plan.instances
    )
    llm_hosts = [h.name for h in cfg.hosts if HostGroup.LLM in h.groups]
    spread = [
        m.name for m in cfg.models if len({r.host for r in replicas if r.model == m.name}) > 1
    ]
    routers = tuple(router_hosts(cfg))
    assert len(llm_hosts) >= 2 and len(spread) >= 2, f"{CONFIG}: not a lab with scale-out"
    assert routers
    # keepalived gives the virtual address to the first router host at the first election.
    victim = next(h for h in reversed(llm_hosts) if h != routers[0])
    return Layout(replicas, tuple(spread), routers, victim)


# --------------------------------------------------------------------------- counting


def counter_samples(text: str, family: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of each ``<family>_total`` sample in a Prometheus exposition."""
    for metric in text_string_to_metric_families(text):
        if metric.name == family:
            for sample in metric.samples:
                if sample.name == f"{family}_total":
                    yield sample.labels, sample.value


def router_metrics(cfg: HxpConfig, url: str | None = None) -> str:
    """The router's metrics at ``url`` (one router host's own), else at the clients' address."""
    ca = router_ca(cfg)
    context = ssl.create_default_context(cafile=ca) if ca is not None else None
    with urllib.request.urlopen(
        f"{url or router_url(cfg)}/metrics", timeout=30, context=context
    ) as r:
        return str(r.read().decode())


def router_answered(cfg: HxpConfig) -> Counter[str]:
    """Requests the router answered 200, by backend (its hxp_router_requests_total)."""
    counts: Counter[str] = Counter()
    for labels, value in counter_samples(router_metrics(cfg), "hxp_router_requests"):
        if labels.get("status") == "200":
            counts[labels["backend"]] += int(value)
    return counts


def router_failed_attempts(cfg: HxpConfig, url: str | None = None) -> Counter[str]:
    """Attempts at a backend that failed (and were retried elsewhere or not), by backend."""
    counts: Counter[str] = Counter()
    failures = counter_samples(router_metrics(cfg, url), "hxp_router_upstream_failures")
    for labels, value in failures:
        counts[labels["backend"]] += int(value)
    return counts


def vllm_succeeded(hosts: Hosts, layout: Layout) -> Counter[str]:
    """Requests each model server finished (vllm:request_success_total), asked on its host."""
    counts: Counter[str] = Counter()
    for r in layout.replicas:
        text = http_on(
            hosts[r.host],
            f"http://{r.address}:{r.port}/metrics",
            env_file=f"/etc/hxp/vllm/{r.model}.env",
        )
        counts[r.backend] = int(sum(v for _, v in counter_samples(text, "vllm:request_success")))
    return counts


def subtract(after: Counter[str], before: Counter[str]) -> Counter[str]:
    return Counter({key: after[key] - before[key] for key in after})


# --------------------------------------------------------------------------- the router's view


def worker_views(router: testinfra.host.Host, backends: list[str]) -> dict[str, list[dict]]:
    """Each backend's state in each router worker (the admin API on the router's host)."""
    rc, answer = admin(router, "backends")
    assert rc == 0, answer
    return {b: list(answer["backends"][b]["workers"].values()) for b in backends}


def out_of_rotation(router: testinfra.host.Host, backends: list[str]) -> bool:
    """No worker routes to any of ``backends``: failed health checks or an open breaker."""
    views = worker_views(router, backends)
    return all(not w["healthy"] or w["breaker"] == "open" for ws in views.values() for w in ws)


def in_rotation(router: testinfra.host.Host, backends: list[str]) -> bool:
    views = worker_views(router, backends)
    return all(w["healthy"] and w["breaker"] == "closed" for ws in views.values() for w in ws)


def seconds_until(condition: Callable[[], bool], within_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within_s:
            pytest.fail(f"{what} not within {within_s:.0f} s")
        time.sleep(POLL_S)
    return time.monotonic() - started


# --------------------------------------------------------------------------- the tests


def test_load_spreads_each_model_over_both_llm_hosts(
    cfg: HxpConfig, hosts: Hosts, layout: Layout
) -> None:
    router_before, vllm_before = router_answered(cfg), vllm_succeeded(hosts, layout)
    report = start_load(
        cfg, models=list(layout.models), concurrency=CONCURRENCY, duration_s=SPREAD_LOAD_S
    ).wait()
    by_router = subtract(router_answered(cfg), router_before)
    # A model server counts a request once it has finished it, at most moments after the answer.
    deadline = time.monotonic() + 10
    while True:
        by_vllm = subtract(vllm_succeeded(hosts, layout), vllm_before)
        if all(by_vllm[b] >= by_router[b] for b in by_vllm) or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)

    print(f"\n{'model':<8} {'backend':<10} {'host':<18} {'load tool':>9} {'router':>7} {'vllm':>6}")
    for r in layout.replicas:
        print(
            f"{r.model:<8} {r.backend:<10} {r.host:<18} {report['by_backend'].get(r.backend, 0):>9}"
            f" {by_router[r.backend]:>7} {by_vllm[r.backend]:>6}"
        )
    assert report["failed"] == {}, report["failures"]
    for model in layout.models:
        replicas = layout.of_model(model)
        total = sum(by_router[r.backend] for r in replicas)
        assert total > 0, f"no request of {model} was answered"
        floor = MIN_SHARE_OF_EVEN * total / len(replicas)
        for r in replicas:
            assert by_router[r.backend] >= floor, (model, dict(by_router))
            # The model server on that host saw them: the router's count is no label alone.
            assert by_vllm[r.backend] >= by_router[r.backend] >= floor, (r, dict(by_vllm))


def test_an_llm_host_powered_off_under_load_fails_no_request(
    cfg: HxpConfig, hosts: Hosts, layout: Layout
) -> None:
    router = hosts[layout.routers[0]]
    gone = layout.on_victim()
    assert gone and in_rotation(router, gone), worker_views(router, gone)
    lab = Lab(load_lab(CONFIG), BaseImage.default(), log=print)
    failed_before = router_failed_attempts(cfg)
    run = start_load(
        cfg, models=list(layout.models), concurrency=CONCURRENCY, duration_s=OUTAGE_LOAD_S
    )
    powered_off = False
    try:
        time.sleep(POWER_OFF_AT_S)
        started = time.monotonic()
        powered_off = True
        assert lab.power_off([layout.victim]) == [layout.victim]
        off_s = time.monotonic() - started
        dropped_s = off_s + seconds_until(
            lambda: out_of_rotation(router, gone),
            OUT_OF_ROTATION_WITHIN_S,
            f"the router dropping {gone}",
        )
        report = run.wait()
        failed_attempts = subtract(router_failed_attempts(cfg), failed_before)
        print(
            f"\n{layout.victim} powered off {POWER_OFF_AT_S:.0f} s into {OUTAGE_LOAD_S:.0f} s of "
            f"load on {list(layout.models)} ({off_s:.1f} s to power off); every router worker "
            f"stopped sending to {gone} {dropped_s:.1f} s after the power-off began; "
            f"{report['ok']} ok, {sum(report['failed'].values())} failed {report['failed']}; "
            f"failed attempts retried by the router {dict(failed_attempts)}"
        )
        print("timeline (by second sent):")
        print("\n".join(timeline_lines(report["timeline"])))
        assert report["failed"] == {}, report["failures"]
        assert report["ok"] > 0

        started = time.monotonic()
        boot_again()
        powered_off = False
        booted_s = time.monotonic() - started
        back_s = booted_s + seconds_until(
            lambda: in_rotation(router, gone), BACK_IN_ROTATION_WITHIN_S, f"{gone} back"
        )
        served_s, window = served_again(cfg, layout, gone, started)
        print(
            f"{layout.victim} booted in {booted_s:.1f} s; every router worker had {gone} healthy "
            f"{back_s:.1f} s after the boot began; requests reached them again within "
            f"{served_s:.1f} s (that window by backend: {window['by_backend']})"
        )
    finally:
        if powered_off:  # the test failed with the host off: boot it for whatever runs next
            boot_again()


def boot_again() -> None:
    """`hxp lab up`, which boots the hosts that are off; from its own process, whose detached
    host supervisors outlive it (started from this one, they would outlive their Popen)."""
    subprocess.run(
        [sys.executable, "-m", "hxp_runtime.cli", "lab", "up", str(CONFIG)],
        cwd=REPO, check=True, timeout=300, capture_output=True,
    )  # fmt: skip


def served_again(
    cfg: HxpConfig, layout: Layout, backends: list[str], since: float
) -> tuple[float, dict]:
    """Load in short windows until each of ``backends`` served requests in one: the seconds
    since ``since`` and that window's report. No request of any window may fail."""
    while True:
        window = start_load(
            cfg, models=list(layout.models), concurrency=CONCURRENCY, duration_s=WINDOW_S
        ).wait()
        assert window["failed"] == {}, window["failures"]
        took = time.monotonic() - since
        if all(window["by_backend"].get(b, 0) > 0 for b in backends):
            return took, window
        if took > BACK_IN_ROTATION_WITHIN_S:
            pytest.fail(f"{backends} served nothing within {BACK_IN_ROTATION_WITHIN_S:.0f} s")


# --------------------------------------------------------------------------- rolling, two routers

ROLL_WINDOW_S = 15.0


def event_log(output: str) -> Path:
    """The run's event log, which `hxp deploy` names last ("event log: PATH"; its console
    breaks a long path over lines where the output is no terminal)."""
    assert "event log:" in output, output[-3000:]
    parts = []
    for line in output.rsplit("event log:", 1)[1].strip().splitlines():
        if not line.strip() or " " in line.strip():
            break
        parts.append(line.strip())
    found = Path("".join(parts))
    assert (found / "job_events").is_dir(), (found, output[-3000:])
    return found


def drains_in_run(output: str, task: str) -> set[tuple[str, str]]:
    """(router host, backend) of each item of the deploy's task ``task`` that ran: read from
    the run's event log."""
    pairs = set()
    for path in (event_log(output) / "job_events").glob("*.json"):
        event = json.loads(path.read_text())
        data = event.get("event_data", {})
        if event.get("event") == "runner_item_on_ok" and data.get("task", "").startswith(task):
            item = data["res"]["item"]
            pairs.add((item["router"], item["backend"]))
    return pairs


def test_a_rolling_restart_drains_in_every_router_and_fails_no_request(
    cfg: HxpConfig, hosts: Hosts, layout: Layout, config_copy: Path
) -> None:
    """Each router host keeps its own drains: a replica restarted while one router still sends
    it requests fails those requests there (or costs a retry elsewhere). Load goes through each
    router's own address, without the load tool's retries, while `hxp deploy` rolls one
    replicated model's servers (an engine setting changed) one after the other."""
    assert len(layout.routers) >= 2, f"{CONFIG}: one router; this checks the drains of several"
    model = layout.models[0]
    rolled = [r.backend for r in layout.of_model(model)]
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    for entry in data["models"]:
        if entry["name"] == model:
            entry["engine"] = {
                **entry["engine"],
                "max_num_seqs": entry["engine"]["max_num_seqs"] - 1,
            }
    config_copy.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    assert load_config(config_copy).model(model).engine.max_num_seqs == (
        cfg.model(model).engine.max_num_seqs - 1
    )
    urls = {host: router_host_url(cfg, host) for host in layout.routers}
    failed_before = {host: router_failed_attempts(cfg, url) for host, url in urls.items()}

    deploy = hxp_deploy(config_copy)
    reports: dict[str, list[dict]] = {host: [] for host in layout.routers}
    while deploy.running():
        runs = {
            host: start_load(
                cfg, models=list(layout.models), concurrency=4, duration_s=ROLL_WINDOW_S,
                retries=False, url=url,
            )
            for host, url in urls.items()
        }  # fmt: skip
        for host, run in runs.items():
            reports[host].append(run.wait())
    rolled_s = deploy.finished()
    drained = drains_in_run(deploy.output, "Drain in every router")
    undrained = drains_in_run(deploy.output, "Give traffic again")
    failed_attempts = {
        host: subtract(router_failed_attempts(cfg, url), failed_before[host])
        for host, url in urls.items()
    }
    print(f"\nrolling restart of {rolled} under load through {len(urls)} routers: {rolled_s:.0f} s")
    print(f"drained (router, backend): {sorted(drained)}")
    for host, windows in reports.items():
        failed: Counter[str] = Counter()
        by_backend: Counter[str] = Counter()
        for window in windows:
            failed.update(window["failed"])
            by_backend.update(window["by_backend"])
        print(
            f"through {host}: {len(windows)} windows, {sum(w['ok'] for w in windows)} ok, "
            f"failed {dict(failed)}, by backend {dict(by_backend)}; "
            f"failed attempts at a backend {dict(+failed_attempts[host])}"
        )
    if os.environ.get("HXP_STACK_DISPOSABLE") != "1":
        print(f"the original deployed back in {hxp_deploy(CONFIG).finished():.0f} s")

    every_pair = {(host, backend) for host in layout.routers for backend in rolled}
    assert drained == every_pair and undrained == every_pair, (drained, undrained)
    for host, windows in reports.items():
        assert all(w["failed"] == {} for w in windows), [w["failures"] for w in windows]
        assert sum(w["ok"] for w in windows) > 0, host
        # Drained first, a restarting server got no request from either router.
        assert all(failed_attempts[host][b] == 0 for b in rolled), (host, failed_attempts[host])
