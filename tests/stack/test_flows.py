"""The firewall admits exactly the flow matrix: from every lab host to every other host's every
listening TCP port, and from this controller (at its address on the lab bridge) to every host's,
a connection succeeds where hxp.yml's flows (hxp_runtime.flows) admit it and is dropped or
refused everywhere else. Prints the matrix of results."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest
import testinfra

from hxp_runtime.config import HxpConfig, plan_deployment
from hxp_runtime.flows import Flow, allowed, flow_matrix

Hosts = dict[str, testinfra.host.Host]

# Run with python3 on a source host: argv[1] is [[address, port], ...]; prints, for each, whether
# a TCP connection opened within the timeout. In parallel: a dropped port costs the timeout.
PROBE = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def connects(target):
    try:
        socket.create_connection(tuple(target), 2).close()
        return True
    except OSError:
        return False
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(64) as pool:
    print(json.dumps(list(pool.map(connects, targets))))
"""


def listening_ports(host: testinfra.host.Host) -> set[int]:
    """TCP ports listening on an address other hosts can reach (not loopback)."""
    ports = set()
    for line in host.check_output("ss -ltnH").splitlines():
        local = line.split()[3]
        address, port = local.rsplit(":", 1)
        address = address.strip("[]").split("%")[0]
        if address != "*" and ipaddress.ip_address(address).is_loopback:
            continue
        ports.add(int(port))
    return ports


@pytest.fixture(scope="module")
def flows(cfg: HxpConfig) -> list[Flow]:
    return flow_matrix(cfg, plan_deployment(cfg))


def test_every_host_admits_exactly_its_flows(cfg: HxpConfig, hosts: Hosts, flows: list[Flow]):
    # Without the firewall (firewall.enabled false) only half holds: every flow the stack needs
    # connects; the ports a fence would close are counted and printed, not asserted.
    fenced = cfg.firewall is not None and cfg.firewall.enabled
    address = {h.name: str(h.address) for h in cfg.hosts}
    listening = {name: listening_ports(host) for name, host in hosts.items()}
    rows, wrong = [], []
    # Every lab host, and this controller at its address on the lab bridge (the gateway).
    sources: list[tuple[str, str, testinfra.host.Host | None]] = [
        (name, address[name], host) for name, host in sorted(hosts.items())
    ]
    if cfg.lab is not None:
        sources.append(("controller", str(cfg.lab.gateway.ip), None))
    for source, source_address, host in sources:
        targets = [
            (dest, port)
            for dest in sorted(listening)
            if dest != source
            for port in sorted(listening[dest])
        ]
        argv = json.dumps([[address[dest], port] for dest, port in targets])
        if host is None:
            probe = subprocess.run(
                [sys.executable, "-c", PROBE, argv],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            )
            result = json.loads(probe.stdout)
        else:
            result = json.loads(host.check_output(f"python3 -c {_quote(PROBE)} {_quote(argv)}"))
        for (dest, port), connected in zip(targets, result, strict=True):
            expected = allowed(flows, source_address, dest, port)
            rows.append((source, dest, port, connected, expected))
            if connected != expected and (fenced or expected):
                wrong.append((source, dest, port, "connects" if connected else "blocked"))
    print()
    print(f"{'from':24} {'to':24} {'port':>6}  result   expected")
    for source, dest, port, connected, expected in rows:
        mark = "" if connected == expected else "  <-- WRONG"
        print(
            f"{source:24} {dest:24} {port:>6}  {'open' if connected else 'blocked':8} "
            f"{'open' if expected else 'blocked'}{mark}"
        )
    assert any(expected for *_, expected in rows), "no admitted flow was probed"
    assert any(not expected for *_, expected in rows), "no blocked port was probed"
    unfenced = sum(connected and not expected for _, _, _, connected, expected in rows)
    print(f"firewall {'on' if fenced else 'off'}: {unfenced} ports open beyond the matrix")
    assert wrong == [], f"connections that disagree with the flow matrix: {wrong}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
