"""Role firewall on both lab hosts: default drop, exactly this host's flows admitted, the rule
set loaded at boot. Probes: test_from_llm_host.py and test_database_host.py."""

import pytest
from probe import ADMITTED


@pytest.fixture(scope="module")
def database(host):
    return host.backend.get_hostname() == "hx-postgres-server-01"


def test_the_rule_set_drops_by_default_and_loads_at_boot(host):
    table = host.check_output("nft list table inet hxp")
    assert "policy drop;" in table
    assert 'iif "lo" accept' in table
    assert host.service("nftables").is_enabled


def test_only_this_hosts_flows_are_admitted(host, database):
    table = host.check_output("nft list table inet hxp")
    assert "dport 22 accept" in table
    assert (f"dport {ADMITTED} accept" in table) == database
