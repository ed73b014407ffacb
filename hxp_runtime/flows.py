"""The flow matrix: every connection a deployment needs, computed from hxp.yml and its plan.

One :class:`Flow` per (source, destination host, port): who opens it (an hxp host, the API
clients' networks or the controller hxp deploys from), the source addresses, the destination,
and why. Role firewall admits exactly the flows whose destination is its host, from their source
addresses only, and drops every other inbound connection; ``hxp plan --flows`` prints the matrix
and ``hxp render`` writes each host's inbound flows (``hxp_firewall_inbound``).

Sources:

- ``clients``: ``firewall.client_networks`` (default any address: the router's public port is
  the deployment's front door, guarded by API keys; narrow it to the networks of the
  applications). Qdrant serves the same applications.
- ``controller``: ``firewall.controller``, or, in a lab, the lab's gateway (the controller's
  address on the lab bridge). It gets SSH on every host and the operators' interfaces.
- an hxp host: its address (``/32``).

Routers behind one virtual address (``router.hosts``): each router host gets the clients' flow to
the router port (the host that holds the address takes its connections there), and VRRP (IP
protocol 112, no port) from the other router hosts only, so that keepalived can move the address.

Services that only listen on loopback (the router's admin API) and vLLM's internal worker ports
need no flow: the firewall leaves loopback alone and drops the rest.

A model split across hosts (``models[].pipeline``) is the exception: its engine processes talk
across hosts, unauthenticated. The workers connect to the head's master port (the
torch.distributed store); then every stage binds ephemeral ports that the others connect to (the
gloo process group's pairs, the ZeroMQ queues that carry the scheduler's steps and the results),
so those flows cover the llm hosts' ephemeral range. Both go from the model's stage hosts to the
model's stage hosts only: no other host, client or the controller reaches them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from hxp_runtime.config import (
    Firewall,
    HostGroup,
    HxpConfig,
    cache_address,
    resolve_host,
    router_hosts,
)
from hxp_runtime.observability.scrape import scraped_addresses
from hxp_runtime.planner import Plan

CLIENTS = "clients"
CONTROLLER = "controller"
TCP = "tcp"
# IP protocol 112, keepalived's adverts: no port (the flows' port is 0).
VRRP = "vrrp"
VRRP_REASON = "VRRP: keepalived moves the virtual address"
# The ephemeral ports of the llm hosts: role common's net.ipv4.ip_local_port_range there
# (hxp_common_sysctl_llm; tests/unit/test_flows.py keeps the two in step). vLLM's inter-node
# sockets bind port 0, so they land in it; the ports hxp services listen on are reserved out of it.
ENGINE_PORTS = (10240, 65000)


@dataclass(frozen=True)
class Flow:
    source: str  # an hxp host, CLIENTS or CONTROLLER
    networks: tuple[str, ...]  # source addresses, CIDR
    destination: str  # an hxp host, or ``URL-host:port`` for an egress flow
    address: str  # destination address
    port: int
    reason: str
    protocol: str = TCP
    # Leaves the deployment (Alertmanager's webhooks): informational, no host admits it.
    egress: bool = False
    # The last port of a range that starts at ``port`` (a pipeline's engine sockets); None: one.
    port_end: int | None = None

    def admits(self, port: int) -> bool:
        return self.port <= port <= (self.port_end or self.port)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "networks": list(self.networks),
            "destination": self.destination,
            "address": self.address,
            "port": self.port,
            **_port_end(self),
            "protocol": self.protocol,
            "reason": self.reason,
            "egress": self.egress,
        }


def _port_end(flow: Flow) -> dict[str, int]:
    # Written only for a range, so that single-port flows read as they always have.
    return {} if flow.port_end is None else {"port_end": flow.port_end}


def firewall_settings(cfg: HxpConfig) -> Firewall:
    return cfg.firewall if cfg.firewall is not None else Firewall(enabled=False)


def controller_networks(cfg: HxpConfig) -> tuple[str, ...]:
    given = firewall_settings(cfg).controller
    if given:
        return tuple(str(n) for n in given)
    if cfg.lab is not None:
        return (str(ipaddress.IPv4Network(cfg.lab.gateway.ip)),)
    return ()


def _flows(cfg: HxpConfig, plan: Plan) -> Iterator[Flow]:
    fw = firewall_settings(cfg)
    address = {h.name: str(h.address) for h in cfg.hosts}
    by_address = {a: name for name, a in address.items()}
    own = {name: (f"{a}/32",) for name, a in address.items()}
    clients = tuple(str(n) for n in fw.client_networks)
    controller = controller_networks(cfg)

    def to(source: str, networks: tuple[str, ...], host: str, port: int, why: str) -> Flow:
        return Flow(source, networks, host, address[host], port, why)

    for host in cfg.hosts:
        yield to(CONTROLLER, controller, host.name, host.ssh_port, "SSH: deploy and operate")
    routers = router_hosts(cfg)
    for router in routers:
        yield to(CLIENTS, clients, router, cfg.router.port, _api(cfg))
        yield to(CONTROLLER, controller, router, cfg.router.port, "OpenAI API: smoke checks")
        for inst in plan.instances:
            yield to(router, own[router], inst.host, inst.port, f"model {inst.model}")
            model = cfg.model(inst.model)
            if cfg.blue_green_wanted(model):
                why = f"model {inst.model}, its other version (blue-green)"
                yield to(router, own[router], inst.host, model.spare_port, why)
        if cfg.database is not None:
            db = resolve_host(cfg, cfg.database.host, HostGroup.DATABASE)
            if db is not None:
                yield to(router, own[router], db, cfg.database.port, "PostgreSQL: keys, usage")
        cache = cache_address(cfg)
        # On the router's own host Redis listens on loopback: no flow crosses the firewall.
        if cfg.cache is not None and cache is not None and not cache[1].is_loopback:
            yield to(router, own[router], cache[0], cfg.cache.port, "Redis: limits, cache")
        # keepalived's adverts to the other router hosts, when routers share an address.
        for peer in routers:
            if peer != router and cfg.router.virtual_address is not None:
                yield Flow(router, own[router], peer, address[peer], 0, VRRP_REASON, VRRP)
    yield from _pipeline_flows(cfg, address, own)
    if cfg.vector_db is not None:
        vector = resolve_host(cfg, cfg.vector_db.host, HostGroup.VECTOR)
        if vector is not None:
            yield to(CLIENTS, clients, vector, cfg.vector_db.http_port, "Qdrant REST")
            yield to(CLIENTS, clients, vector, cfg.vector_db.grpc_port, "Qdrant gRPC")
    yield from _metrics_flows(cfg, plan, address, by_address, controller)


def _api(cfg: HxpConfig) -> str:
    vip = cfg.router.virtual_address
    # The host holding the virtual address takes its connections: the same port, rule and
    # sources (nftables matches the port, not the destination address).
    return "OpenAI API" if vip is None else f"OpenAI API (also at virtual address {vip.address})"


def _pipeline_flows(
    cfg: HxpConfig, address: Mapping[str, str], own: Mapping[str, tuple[str, ...]]
) -> Iterator[Flow]:
    """The engine traffic of each model split across hosts, between its stage hosts only."""
    for model in cfg.models:
        if model.pipeline is None:
            continue
        head, *workers = model.pipeline.hosts
        for worker in workers:
            yield Flow(
                worker,
                own[worker],
                head,
                address[head],
                model.pipeline.master_port,
                f"model {model.name}: pipeline stage joins the head",
            )
        first, last = ENGINE_PORTS
        for host in model.pipeline.hosts:
            for peer in model.pipeline.hosts:
                if peer != host:
                    why = f"model {model.name}: pipeline engine sockets"
                    yield Flow(peer, own[peer], host, address[host], first, why, port_end=last)


def _metrics_flows(
    cfg: HxpConfig,
    plan: Plan,
    address: dict[str, str],
    by_address: dict[str, str],
    controller: tuple[str, ...],
) -> Iterator[Flow]:
    m = cfg.metrics
    monitor = resolve_host(cfg, m.host, HostGroup.METRICS) if m else None
    if m is None or monitor is None:
        return
    source = (f"{address[monitor]}/32",)
    # Exactly what Prometheus is configured to scrape.
    for job, target in scraped_addresses(cfg, plan):
        host, scraped_port = target.rsplit(":", 1)
        yield Flow(
            monitor, source, by_address[host], host, int(scraped_port), f"Prometheus scrapes {job}"
        )
    yield Flow(monitor, source, monitor, address[monitor], m.alertmanager_port, "alerts")
    yield Flow(monitor, source, monitor, address[monitor], m.prometheus_port, "Grafana: PromQL")
    for port, name in (
        (m.grafana_port, "Grafana"),
        (m.prometheus_port, "Prometheus"),
        (m.alertmanager_port, "Alertmanager"),
    ):
        yield Flow(CONTROLLER, controller, monitor, address[monitor], port, f"{name}: operators")
    for receiver in m.alerting.receivers:
        url = urlsplit(receiver.webhook_url)
        port = url.port or (443 if url.scheme == "https" else 80)
        yield Flow(
            monitor,
            source,
            f"{url.hostname}:{port}",
            str(url.hostname),
            port,
            f"Alertmanager notifies {receiver.name}",
            egress=True,
        )


def flow_matrix(cfg: HxpConfig, plan: Plan) -> list[Flow]:
    """Every flow of the deployment, one per (source, destination, port), in a stable order."""
    merged: dict[tuple[str, str, int, str], Flow] = {}
    for flow in _flows(cfg, plan):
        key = (flow.source, flow.destination, flow.port, flow.protocol)
        if key in merged:
            # One port, two reasons (Prometheus's own page scraped and queried by Grafana).
            kept = merged[key]
            reason = kept.reason if flow.reason in kept.reason else f"{kept.reason}; {flow.reason}"
            merged[key] = replace(kept, reason=reason)
        else:
            merged[key] = flow
    return sorted(
        merged.values(), key=lambda f: (f.egress, f.destination, f.port, f.source != CONTROLLER)
    )


def inbound(flows: list[Flow], host: str) -> list[dict[str, Any]]:
    """What role firewall admits on ``host``: the flows that end there."""
    return [
        {
            "source": f.source,
            "networks": list(f.networks),
            "port": f.port,
            **_port_end(f),
            "protocol": f.protocol,
            "reason": f.reason,
        }
        for f in flows
        if f.destination == host and not f.egress
    ]


def allowed(flows: list[Flow], source_address: str, host: str, port: int) -> bool:
    """Whether a connection from ``source_address`` to ``host``:``port`` is in the matrix."""
    src = ipaddress.IPv4Address(source_address)
    return any(
        f.destination == host
        and f.protocol == TCP
        and f.admits(port)
        and not f.egress
        and any(src in ipaddress.IPv4Network(n) for n in f.networks)
        for f in flows
    )


def host_sources(flows: list[Flow], host: str, port: int) -> list[str]:
    """The addresses of the hxp hosts that connect to ``host``:``port``, in the matrix's order:
    a service's own client list (PostgreSQL's pg_hba) taken from here cannot admit a host the
    firewall drops, nor miss one it admits."""
    networks = (
        f.networks
        for f in flows
        if f.destination == host
        and f.port == port
        and not f.egress
        and f.source not in (CLIENTS, CONTROLLER)
    )
    return list(dict.fromkeys(n for ns in networks for n in ns))
