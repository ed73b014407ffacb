"""Facts about a lab host the tests of role common compare against."""

import pytest


@pytest.fixture
def in_container(host):
    return host.run("systemd-detect-virt --container").rc == 0


@pytest.fixture
def lab_gateway(host):
    """The lab bridge's address: the host's default gateway (apt proxy and NTP source)."""
    return host.check_output("ip -4 route show default").split()[2]
