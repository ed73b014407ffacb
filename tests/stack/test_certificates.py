"""The data services' certificates seen from Prometheus: for PostgreSQL (database.tls) and Redis
(cache.tls), the lab's Prometheus holds hxp_certificate_expiry_timestamp_seconds from the node
exporter of the service's host (role node_exporter's textfile), equal to the notAfter
`openssl x509 -enddate` reads from the certificate the service serves, and no read error.
"""

from __future__ import annotations

import datetime
import time

import pytest
import testinfra

from hxp_runtime.config import HostGroup, HxpConfig, resolve_host
from tests.stack.conftest import Prometheus

Hosts = dict[str, testinfra.host.Host]

# certificate label -> (host group, the file the service serves; Debian 12's PostgreSQL 15).
SERVED = {
    "postgresql": (HostGroup.DATABASE, "/etc/postgresql/15/main/tls/server.crt"),
    "redis": (HostGroup.CACHE, "/etc/hxp-redis-tls/redis.crt"),
}
# A scrape interval and an evaluation, with room: the series exists long before a stack test.
SEEN_WITHIN_S = 60


def _tls_configured(cfg: HxpConfig, name: str) -> bool:
    service = cfg.database if name == "postgresql" else cfg.cache
    return service is not None and service.tls is not None


def _not_after(host: testinfra.host.Host, path: str) -> int:
    end = host.check_output("openssl x509 -noout -enddate -in %s", path)
    moment = datetime.datetime.strptime(end.removeprefix("notAfter="), "%b %d %H:%M:%S %Y %Z")
    return int(moment.replace(tzinfo=datetime.UTC).timestamp())


def _series(prometheus: Prometheus, expr: str) -> dict[str, float]:
    """host -> value of each series the instant query returns."""
    result = prometheus.get("/api/v1/query", query=expr)["result"]
    return {r["metric"]["host"]: float(r["value"][1]) for r in result}


@pytest.mark.parametrize("name", sorted(SERVED))
def test_prometheus_holds_the_served_certificates_not_after(
    cfg: HxpConfig, hosts: Hosts, prometheus: Prometheus, name: str
) -> None:
    if not _tls_configured(cfg, name):
        pytest.fail(f"{name}: the lab config has no TLS for it; the lab's hxp.yml sets both")
    group, served = SERVED[name]
    host = resolve_host(cfg, None, group)
    assert host is not None
    expected = {host: float(_not_after(hosts[host], served))}
    selector = f'{{certificate="{name}",service="node"}}'
    deadline = time.monotonic() + SEEN_WITHIN_S
    while (
        seen := _series(prometheus, f"hxp_certificate_expiry_timestamp_seconds{selector}")
    ) != expected and time.monotonic() < deadline:
        time.sleep(5)
    assert seen == expected
    assert _series(prometheus, f"hxp_certificate_read_error{selector}") == {host: 0.0}
