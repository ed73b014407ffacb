"""Role firewall on the database host, where the probe listeners run: loopback untouched, the
controller admitted to SSH and nothing else."""

import socket

import pytest
from probe import ADMITTED, NOT_ADMITTED, address_of, connects

testinfra_hosts = ["hx-postgres-server-01"]


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
