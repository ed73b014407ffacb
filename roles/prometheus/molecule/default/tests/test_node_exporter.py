"""Role node_exporter on the metrics host (every hxp host runs it; the metrics host
scenario shows it): Debian's exporter on the host's address only, serving
node_ metrics on that address (where Prometheus scrapes it), in a hardened unit."""

testinfra_hosts = ["metrics"]
PORT = 9100
UNIT = "prometheus-node-exporter"


def test_service_runs_and_is_enabled(assert_running_and_enabled):
    assert_running_and_enabled(UNIT)


def test_listens_on_the_host_address_only(assert_listens_on_address_only):
    assert_listens_on_address_only(PORT)


def test_serves_node_metrics_on_the_host_address(address, unit_properties, http_on_host):
    # To the host's own address, as the Prometheus beside it scrapes it (the firewall of the
    # stack admits no other client).
    for _ in range(2):
        status, metrics = http_on_host(f"http://{address}:{PORT}/metrics")
        assert status == 200, metrics
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


def test_unit_exposure_is_within_the_limit(assert_exposure):
    assert_exposure(UNIT)
