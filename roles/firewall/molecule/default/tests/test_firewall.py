"""Role firewall on two lab hosts: default drop, exactly the configured flows admitted from
their sources, loopback untouched, the rule set loaded at boot."""

import socket

import pytest

ADMITTED, NOT_ADMITTED = 7001, 7002

CONNECT = (
    "python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)' "
    "{} {}"
)


@pytest.fixture(scope="module")
def database(host):
    return host.backend.get_hostname() == "hx-postgres-server-01"


def connects(host, address, port):
    return host.run(CONNECT.format(address, port)).rc == 0


def address_of(host, name):
    return host.backend.ansible_runner.get_variables(name)["ansible_host"]


def test_the_rule_set_drops_by_default_and_loads_at_boot(host):
    table = host.check_output("nft list table inet hxp")
    assert "policy drop;" in table
    assert 'iif "lo" accept' in table
    assert host.service("nftables").is_enabled


def test_only_this_hosts_flows_are_admitted(host, database):
    table = host.check_output("nft list table inet hxp")
    assert "dport 22 accept" in table
    assert ("dport 7001 accept" in table) == database


def test_the_llm_host_reaches_the_admitted_port_only(host):
    if host.backend.get_hostname() != "hx-llm-server-01":
        pytest.skip("probes go from the LLM host")
    target = address_of(host, "hx-postgres-server-01")
    assert connects(host, target, ADMITTED)
    assert not connects(host, target, NOT_ADMITTED)


def test_loopback_is_left_alone(host, database):
    if not database:
        pytest.skip("the listeners run on the database host")
    assert connects(host, "127.0.0.1", NOT_ADMITTED)
    # The host's own address goes over loopback too.
    assert connects(host, address_of(host, "hx-postgres-server-01"), NOT_ADMITTED)


def test_the_controller_is_not_admitted_beyond_ssh(host, database):
    if not database:
        pytest.skip("the listeners run on the database host")
    address = address_of(host, "hx-postgres-server-01")
    with socket.create_connection((address, 22), 3):
        pass
    with pytest.raises(OSError):
        socket.create_connection((address, ADMITTED), 3).close()
