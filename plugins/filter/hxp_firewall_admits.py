"""hxp_firewall_admits: whether role firewall's rules admit a connection, checked before the rule
set is applied, so that a converge never locks out the controller it runs from."""

from __future__ import annotations

import ipaddress
from typing import Any


def hxp_firewall_admits(inbound: list[dict[str, Any]], address: str, port: int | str) -> bool:
    """True when a rule of ``inbound`` (role firewall's hxp_firewall_inbound) admits TCP from
    ``address`` to ``port``."""
    source = ipaddress.ip_address(address)
    return any(
        rule.get("protocol", "tcp") == "tcp"
        and int(rule["port"]) <= int(port) <= int(rule.get("port_end") or rule["port"])
        and any(source in ipaddress.ip_network(n, strict=False) for n in rule["networks"])
        for rule in inbound
    )


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"hxp_firewall_admits": hxp_firewall_admits}
