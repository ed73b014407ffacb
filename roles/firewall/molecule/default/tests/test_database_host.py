"""Role firewall on the database host, where the probe listeners run: loopback untouched, the
controller admitted to SSH and nothing else."""

import socket

import pytest

testinfra_hosts = ["hx-postgres-server-01"]

ADMITTED, NOT_ADMITTED = 7001, 7002

CONNECT = (
    "python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)' "
    "{} {}"
)


def connects(host, address, port):
    return host.run(CONNECT.format(address, port)).rc == 0


def address_of(host, name):
    return host.backend.ansible_runner.get_variables(name)["ansible_host"]


def test_loopback_is_left_alone(host):
    assert connects(host, "127.0.0.1", NOT_ADMITTED)
    # The host's own address goes over loopback too.
    assert connects(host, address_of(host, "hx-postgres-server-01"), NOT_ADMITTED)


def test_the_controller_is_not_admitted_beyond_ssh(host):
    address = address_of(host, "hx-postgres-server-01")
    with socket.create_connection((address, 22), 3):
        pass
    with pytest.raises(OSError):
        socket.create_connection((address, ADMITTED), 3).close()
