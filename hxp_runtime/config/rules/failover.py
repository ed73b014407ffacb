"""router.hosts and router.virtual_address: several routers behind one address (keepalived).

Both or neither: routers on several hosts without a shared address would leave every client to
pick one and to notice when it stops; one address without a second host has nothing to move to.
The address is a free one of the router hosts' network, where VRRP can move it between them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from hxp_runtime.config.problems import Dropped, Problem
from hxp_runtime.config.schema import HxpConfig, VirtualAddress


def failover_problems(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    router = cfg.router
    if router.hosts is not None and router.host is not None:
        yield Problem(
            ("router", "host"),
            "set router.host (one router) or router.hosts (several behind virtual_address), "
            "not both; remove one",
        )
    if router.hosts is not None:
        if len(router.hosts) < 2:
            yield Problem(
                ("router", "hosts"),
                f"lists {len(router.hosts)} host; routers behind a virtual address need at "
                "least 2 (for one router use router.host)",
            )
        for j, name in enumerate(router.hosts):
            if name in router.hosts[:j]:
                yield Problem(("router", "hosts", j), f"{name!r} is listed twice; list it once")
        if router.virtual_address is None and ("router", "virtual_address") not in dropped.fields:
            yield Problem(
                ("router", "hosts"),
                "routers on several hosts need router.virtual_address (address, "
                "virtual_router_id): the one address clients use, which moves to a router "
                "that answers; add it",
            )
    if router.virtual_address is not None:
        if router.hosts is None:
            yield Problem(
                ("router", "virtual_address"),
                "a virtual address moves between router hosts: list them in router.hosts "
                "(at least 2) instead of router.host",
            )
        else:
            yield from _address_problems(cfg, router.virtual_address, router.hosts, dropped)


def _address_problems(
    cfg: HxpConfig, vip: VirtualAddress, hosts: list[str], dropped: Dropped
) -> Iterator[Problem]:
    path = ("router", "virtual_address", "address")
    network = ipaddress.IPv4Interface(f"{vip.address}/{vip.prefix_length}").network
    taken = {h.address: h.name for h in cfg.hosts}
    if vip.address in taken:
        yield Problem(
            path,
            f"{vip.address} is the address of host {taken[vip.address]!r}; the virtual address "
            "must be a free one of the router hosts' network",
        )
    elif vip.address in (network.network_address, network.broadcast_address):
        yield Problem(
            path,
            f"{vip.address} is the network or broadcast address of {network}; choose a free "
            "host address in it",
        )
    if cfg.lab is not None and vip.address == cfg.lab.gateway.ip:
        yield Problem(path, f"{vip.address} is the lab's gateway; choose a free address")
    addresses = {h.name: h.address for h in cfg.hosts}
    outside = [
        f"{name} ({addresses[name]})"
        for name in hosts
        if name in addresses and addresses[name] not in network
    ]
    if outside and not set(hosts) & dropped.names:
        yield Problem(
            path,
            f"{vip.address}/{vip.prefix_length} is not in the network of router hosts "
            f"{', '.join(outside)}: VRRP moves the address only within one network; choose an "
            "address of theirs, or fix prefix_length",
        )
