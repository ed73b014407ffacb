"""Role node_exporter on a lab host: Debian's exporter on the host's address only, serving
node_ metrics to a client on the lab bridge (as Prometheus scrapes it), in a hardened unit."""

import urllib.request

PORT = 9100
UNIT = "prometheus-node-exporter"


def test_service_runs_and_is_enabled(host):
    service = host.service(UNIT)
    assert service.is_running
    assert service.is_enabled


def test_listens_on_the_host_address_only(host, address):
    listening = [s for s in host.socket.get_listening_sockets() if s.endswith(f":{PORT}")]
    assert listening == [f"tcp://{address}:{PORT}"]


def test_serves_node_metrics_over_the_bridge(address, unit_properties):
    # From the controller, without any proxy of its environment: the path Prometheus takes.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(2):
        with opener.open(f"http://{address}:{PORT}/metrics", timeout=10) as response:
            metrics = response.read().decode()
    names = {line.split("{")[0].split()[0] for line in metrics.splitlines() if line[:1].isalpha()}
    assert {"node_cpu_seconds_total", "node_memory_MemTotal_bytes", "node_load1"} <= names
    # Every collector ran inside the unit's system call filter without being killed for it.
    assert unit_properties(UNIT, "NRestarts", "ActiveState") == {
        "NRestarts": "0",
        "ActiveState": "active",
    }


def test_unit_is_hardened_and_unprivileged(assert_hardened):
    properties = assert_hardened(UNIT, "User", "ReadWritePaths")
    assert properties["User"] == "prometheus"
    assert properties["ReadWritePaths"] == ""
