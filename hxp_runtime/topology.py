"""The deployment's topology as a picture: hosts, the services on them, and who calls whom.

Derived from what `hxp render` hands the roles for inventory/lab/hxp.yml, not drawn by hand:
the services are the addresses and ports of the rendered variables (each model server of
``hxp_vllm_instances``, the router's settings, the data and metrics services, and every target
Prometheus scrapes); the calls are the router's backends, database and Redis, Prometheus's scrape
targets and Alertmanagers, Grafana's datasource and Alertmanager's webhook receivers.

``python -m hxp_runtime.topology`` writes docs/architecture/topology.dot and, where Graphviz is
installed, topology.svg from it (``dot -Tsvg``); ``--check`` exits 1 when the DOT is stale.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hxp_runtime.config import load_config, plan_deployment
from hxp_runtime.config.endpoints import LOOPBACK
from hxp_runtime.render import Vars, inventory_files

REPO = Path(__file__).resolve().parents[1]
CONFIG = Path("inventory/lab/hxp.yml")
DOT = Path("docs/architecture/topology.dot")
COMMAND = "python -m hxp_runtime.topology"
CLIENTS = "clients"
SCRAPE = "scrape "

# Services that render places by an address and a port variable (group_vars/all): the role
# that reads them listens there.
ADDRESSED = (
    ("hxp_postgresql_listen_address", "hxp_postgresql_port", "PostgreSQL"),
    ("hxp_postgresql_listen_address", "hxp_postgresql_exporter_port", "postgres exporter"),
    ("hxp_redis_bind_address", "hxp_redis_port", "Redis"),
    ("hxp_redis_bind_address", "hxp_redis_exporter_port", "redis exporter"),
    ("hxp_qdrant_bind_address", "hxp_qdrant_http_port", "Qdrant REST"),
    ("hxp_qdrant_bind_address", "hxp_qdrant_grpc_port", "Qdrant gRPC"),
    ("hxp_prometheus_listen_address", "hxp_prometheus_port", "Prometheus"),
    ("hxp_alertmanager_listen_address", "hxp_alertmanager_port", "Alertmanager"),
    ("hxp_grafana_listen_address", "hxp_grafana_port", "Grafana"),
)


@dataclass(frozen=True, order=True)
class Host:
    name: str
    address: str
    groups: tuple[str, ...]


@dataclass(frozen=True, order=True)
class Service:
    host: str
    port: int
    name: str

    @property
    def node(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, order=True)
class External:
    node: str
    label: str


@dataclass(frozen=True, order=True)
class Call:
    source: str
    target: str
    label: str


@dataclass(frozen=True)
class Topology:
    source: Path
    hosts: tuple[Host, ...]
    services: tuple[Service, ...]
    externals: tuple[External, ...]
    calls: tuple[Call, ...]


DEFAULT_PORTS = {"http": 80, "https": 443}


def _split(url_or_target: str) -> tuple[str, int]:
    """``http://10.0.0.1:8000/x``, ``https://example.com/x`` or ``10.0.0.1:8000`` -> (host,
    port)."""
    parts = urlsplit(url_or_target if "//" in url_or_target else f"//{url_or_target}")
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if parts.hostname is None or port is None:
        raise ValueError(f"no address and port in {url_or_target!r}")
    return parts.hostname, port


def topology(files: dict[Path, Vars], source: Path) -> Topology:
    """The topology in the inventory ``files`` (render's ``inventory_files``)."""
    inventory = files[Path("hosts.yml")]["all"]
    group_all = files[Path("group_vars", "all", "hxp.yml")]
    hosts = tuple(
        Host(
            name,
            str(connection["ansible_host"]),
            tuple(sorted(g for g, m in inventory["children"].items() if name in m["hosts"])),
        )
        for name, connection in inventory["hosts"].items()
    )
    router = group_all["hxp_router_settings"]
    by_address = {h.address: h.name for h in hosts}
    # Loopback is the router's host: only a service beside the router, for the router alone,
    # listens there (Redis: hxp_runtime.config.endpoints.cache_address).
    by_address[str(LOOPBACK)] = by_address[router["listen_host"]]
    services: dict[tuple[str, int], Service] = {}

    def add(address: str, port: int, name: str) -> None:
        where = (by_address[address], port)
        services.setdefault(where, Service(*where, name))

    for host in hosts:
        for instance in files.get(Path("host_vars", host.name, "hxp.yml"), {}).get(
            "hxp_vllm_instances", []
        ):
            add(host.address, instance["port"], f"vLLM {instance['name']}")
    add(router["listen_host"], router["port"], "hxp-router")
    for address_var, port_var, name in ADDRESSED:
        if group_all.get(address_var) and group_all.get(port_var):
            add(group_all[address_var], group_all[port_var], name)
    if group_all.get("hxp_metrics_enabled"):
        for host in hosts:  # playbooks/metrics.yml: node_exporter on every host
            add(host.address, group_all["hxp_node_exporter_port"], "node exporter")
    calls, externals = _calls(group_all, router, add, by_address)
    return Topology(
        source,
        hosts,
        tuple(sorted(services.values())),
        tuple(sorted(externals)),
        tuple(sorted(set(calls))),
    )


def _calls(
    group_all: Vars, router: Vars, add: Callable[[str, int, str], None], by_address: dict[str, str]
) -> tuple[list[Call], list[External]]:
    def node(address: str, port: int) -> str:
        return f"{by_address[address]}:{port}"

    gateway = node(router["listen_host"], router["port"])
    externals = [External(CLIENTS, "API clients")]
    calls = [Call(CLIENTS, gateway, "OpenAI API")]
    for backend in router["backends"]:
        calls.append(Call(gateway, node(*_split(backend["url"])), backend["name"]))
    if "database" in router:
        database = router["database"]
        calls.append(Call(gateway, node(database["host"], database["port"]), "keys, usage"))
    if "redis" in router:
        redis = router["redis"]
        calls.append(Call(gateway, node(redis["host"], redis["port"]), "rate limits, cache"))
    if not group_all.get("hxp_metrics_enabled"):
        return calls, externals
    prometheus = node(group_all["hxp_prometheus_listen_address"], group_all["hxp_prometheus_port"])
    for job in group_all["hxp_prometheus_scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                address, port = _split(target)
                add(address, port, f"{job['job_name']} exporter")
                calls.append(Call(prometheus, node(address, port), f"{SCRAPE}{job['job_name']}"))
    # The model servers (file_sd): a fresh deployment's, each in slot blue.
    for server in group_all["hxp_prometheus_vllm_targets"]:
        address, port = _split(server["slots"]["blue"])
        add(address, port, "vllm exporter")
        calls.append(Call(prometheus, node(address, port), f"{SCRAPE}vllm"))
    for target in group_all["hxp_prometheus_alertmanagers"]:
        calls.append(Call(prometheus, node(*_split(target)), "alerts"))
    grafana = node(group_all["hxp_grafana_listen_address"], group_all["hxp_grafana_port"])
    calls.append(Call(grafana, node(*_split(group_all["hxp_grafana_prometheus_url"])), "PromQL"))
    alertmanager = node(
        group_all["hxp_alertmanager_listen_address"], group_all["hxp_alertmanager_port"]
    )
    for receiver in group_all["hxp_alertmanager_config"].get("receivers", []):
        for webhook in receiver.get("webhook_configs", []):
            address, port = _split(webhook["url"])
            target = f"webhook {receiver['name']}"
            externals.append(External(target, f"{receiver['name']}\n{address}:{port}"))
            calls.append(Call(alertmanager, target, "notify"))
    return calls, externals


def lab_topology(repo: Path = REPO, config: Path = CONFIG) -> Topology:
    cfg = load_config(repo / config)
    return topology(inventory_files(cfg, plan_deployment(cfg)), config)


def _quote(text: str) -> str:
    return json.dumps(text)  # a DOT string: double quotes, backslash escapes


def _lines(topo: Topology) -> Iterator[str]:
    yield "// Generated by `" + COMMAND + "` from " + str(topo.source) + "; do not edit."
    yield "digraph hxp {"
    yield "  graph [rankdir=LR, fontname=Helvetica, fontsize=11, nodesep=0.25, ranksep=1.2];"
    yield "  node [shape=box, style=rounded, fontname=Helvetica, fontsize=10];"
    yield "  edge [fontname=Helvetica, fontsize=8, color=gray30];"
    for external in topo.externals:
        yield f"  {_quote(external.node)} [label={_quote(external.label)}, shape=ellipse];"
    for host in sorted(topo.hosts):
        yield f"  subgraph {_quote('cluster_' + host.name)} {{"
        label = f"{host.name}\n{host.address} ({', '.join(host.groups)})"
        yield f"    label={_quote(label)};"
        for service in topo.services:
            if service.host == host.name:
                text = f"{service.name}\n:{service.port}"
                yield f"    {_quote(service.node)} [label={_quote(text)}];"
        yield "  }"
    for call in topo.calls:
        # Scrapes outnumber the serving path's calls: drawn lighter, so that it stands out.
        style = (
            ", style=dashed, color=gray70, fontcolor=gray50"
            if call.label.startswith(SCRAPE)
            else ""
        )
        yield (
            f"  {_quote(call.source)} -> {_quote(call.target)} [label={_quote(call.label)}{style}];"
        )
    yield "}"


def dot(topo: Topology) -> str:
    return "\n".join(_lines(topo)) + "\n"


def write(repo: Path = REPO) -> list[Path]:
    """Write the DOT file, and the SVG where Graphviz's ``dot`` is installed."""
    target = repo / DOT
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dot(lab_topology(repo)), encoding="utf-8")
    written = [target]
    graphviz = shutil.which("dot")
    if graphviz:
        svg = target.with_suffix(".svg")
        subprocess.run([graphviz, "-Tsvg", str(target), "-o", str(svg)], check=True)
        written.append(svg)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the DOT is stale")
    args = parser.parse_args(argv)
    if args.check:
        current = (REPO / DOT).read_text(encoding="utf-8") if (REPO / DOT).is_file() else ""
        if current != dot(lab_topology()):
            print(f"{DOT} is out of date; run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    for path in write():
        print(f"wrote {path}")
    if not shutil.which("dot"):
        print("Graphviz (dot) is not installed: the SVG was not written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
