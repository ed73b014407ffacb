"""docs/architecture/topology.dot is current, and it is what render hands the roles."""

from __future__ import annotations

import html
from pathlib import Path

from hxp_runtime import topology as topo
from hxp_runtime.config import load_config, plan_deployment
from hxp_runtime.render import inventory_files

REPO = Path(__file__).resolve().parents[2]


def sample() -> topo.Topology:
    cfg = load_config(REPO / "inventory/sample/hxp.yml")
    return topo.topology(inventory_files(cfg, plan_deployment(cfg)), Path("sample"))


def test_the_dot_file_is_current() -> None:
    committed = (REPO / topo.DOT).read_text(encoding="utf-8")
    assert topo.dot(topo.lab_topology(REPO)) == committed, (
        f"{topo.DOT} is out of date: run `{topo.COMMAND}` (or scripts/regenerate) and commit "
        "the .dot and the .svg"
    )


def test_the_svg_draws_every_node_of_the_dot() -> None:
    svg = (REPO / topo.DOT).with_suffix(".svg").read_text(encoding="utf-8")
    lab = topo.lab_topology(REPO)
    for node in [s.node for s in lab.services] + [e.node for e in lab.externals]:
        # Graphviz writes "-" as a character reference.
        title = html.escape(node, quote=False).replace("-", "&#45;")
        assert f"<title>{title}</title>" in svg, (
            f"{node} is missing from the SVG: run `{topo.COMMAND}` where Graphviz is installed"
        )


def test_the_serving_path_follows_the_router_settings() -> None:
    t = sample()
    router = next(s for s in t.services if s.name == "hxp-router")
    assert (router.host, router.port) == ("hx-llm-server-01", 8000)
    from_router = {c.label: c.target for c in t.calls if c.source == router.node}
    assert from_router["mixtral"] == "hx-llm-server-01:11400"
    assert from_router["keys, usage"] == "hx-postgres-server-01:5433"
    assert from_router["rate limits, cache"] == "hx-llm-server-01:6379"
    assert topo.Call(topo.CLIENTS, router.node, "OpenAI API") in t.calls


def test_every_call_joins_two_drawn_nodes_and_every_host_is_drawn() -> None:
    t = sample()
    nodes = {s.node for s in t.services} | {e.node for e in t.externals}
    for call in t.calls:
        assert {call.source, call.target} <= nodes, call
    assert {h.name for h in t.hosts} == {s.host for s in t.services}
    # Every host runs a node exporter that Prometheus scrapes.
    prometheus = next(s for s in t.services if s.name == "Prometheus")
    for host in t.hosts:
        assert topo.Call(prometheus.node, f"{host.name}:9100", "scrape node") in t.calls
    # The sample's LLM host has GPUs: its GPU exporter is a scrape target of its own.
    assert any(s.port == 9835 and s.host == "hx-llm-server-01" for s in t.services)
