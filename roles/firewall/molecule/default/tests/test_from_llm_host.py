"""Role firewall, probed from the LLM host: the database host admits the probe port only."""

# Probes go from the LLM host (the scenario's other host holds the listeners).
from probe import ADMITTED, NOT_ADMITTED, address_of, connects

testinfra_hosts = ["hx-llm-server-01"]


def test_the_llm_host_reaches_the_admitted_port_only(host):
    target = address_of(host, "hx-postgres-server-01")
    assert connects(host, target, ADMITTED)
    assert not connects(host, target, NOT_ADMITTED)
