"""Role firewall, probed from the LLM host: the database host admits the probe port only."""

# Probes go from the LLM host (the scenario's other host holds the listeners).
testinfra_hosts = ["hx-llm-server-01"]

ADMITTED, NOT_ADMITTED = 7001, 7002

CONNECT = (
    "python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)' "
    "{} {}"
)


def connects(host, address, port):
    return host.run(CONNECT.format(address, port)).rc == 0


def address_of(host, name):
    return host.backend.ansible_runner.get_variables(name)["ansible_host"]


def test_the_llm_host_reaches_the_admitted_port_only(host):
    target = address_of(host, "hx-postgres-server-01")
    assert connects(host, target, ADMITTED)
    assert not connects(host, target, NOT_ADMITTED)
