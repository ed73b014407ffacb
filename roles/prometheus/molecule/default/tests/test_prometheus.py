"""Role prometheus on a lab host: Prometheus on the host's address only, behind basic auth,
with the scenario's retention, rules, scrape jobs and Alertmanager; a hardened unit; the web
password only in files Prometheus alone reads, and hashed per host and service.

Requests go from the controller over the lab bridge, as the users of the API reach it.
"""

import json
import re
import time
from typing import Any, NamedTuple

import pytest
import yaml

testinfra_hosts = ["metrics"]
PORT = 9090
ALERTMANAGER_PORT = 9093
USER = "hxp"


@pytest.fixture(scope="module")
def password(scenario_secret):
    return scenario_secret("metrics-web-password")


class Settings(NamedTuple):
    retention_time: str
    retention_size: str
    interval_s: int  # scrape and evaluation
    rules: dict[str, Any]
    credentials: list[str]  # the files in /etc/prometheus/credentials


def size_bytes(size):
    """Bytes of a Prometheus size ("1GB", "1GiB", "1024MB": powers of 1024 either way)."""
    number, unit = re.fullmatch(r"(\d+)([KMGTPE]?)i?B", size).groups()
    return int(number) * 1024 ** "_KMGTPE".index(unit or "_")


@pytest.fixture(scope="module")
def settings(deployed):
    """converge.yml's settings, or the stack's rendered ones."""
    if deployed is None:
        rules = {
            "groups": [
                {
                    "name": "hxp-scenario",
                    "rules": [{"record": "job:up:sum"}, {"alert": "HxpScenarioAlwaysFiring"}],
                }
            ]
        }
        return Settings("2d", "1GB", 2, rules, ["scenario-token", "web-password"])
    return Settings(
        deployed["hxp_prometheus_retention_time"],
        deployed["hxp_prometheus_retention_size"],
        deployed["hxp_prometheus_scrape_interval_s"],
        deployed["hxp_prometheus_rules"],
        sorted({*deployed["hxp_prometheus_credentials"], "web-password"}),
    )


@pytest.fixture(scope="module")
def api(address, password, http_from_controller):
    """api(path): the data of a Prometheus API answer, as the web user."""

    def get(path):
        url = f"http://{address}:{PORT}{path}"
        status, body = http_from_controller(url, user=USER, password=password)
        assert status == 200, body
        return json.loads(body)["data"]

    return get


def eventually(check, timeout=60):
    """check()'s first truthy answer within timeout seconds (scrapes and rules take a cycle)."""
    deadline = time.monotonic() + timeout
    while not (answer := check()):
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(1)
    return answer


def test_service_runs_and_is_enabled(assert_running_and_enabled):
    assert_running_and_enabled("prometheus")


def test_listens_on_the_host_address_only(assert_listens_on_address_only):
    assert_listens_on_address_only(PORT)


def test_the_web_user_and_password_are_required(address, password, assert_basic_auth_required):
    assert_basic_auth_required(f"http://{address}:{PORT}/-/ready", USER, password)


def test_arguments_retention_and_intervals(api, address, settings):
    flags = api("/api/v1/status/flags")
    assert flags["web.listen-address"] == f"{address}:{PORT}"
    assert flags["web.config.file"] == "/etc/prometheus/web.yml"
    assert flags["storage.tsdb.retention.time"] == settings.retention_time
    retention_size = flags["storage.tsdb.retention.size"]
    assert size_bytes(retention_size) == size_bytes(settings.retention_size)
    config = yaml.safe_load(api("/api/v1/status/config")["yaml"])
    assert config["global"]["scrape_interval"] == f"{settings.interval_s}s"
    assert config["global"]["evaluation_interval"] == f"{settings.interval_s}s"
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]


def test_the_given_rules_are_loaded(api, settings):
    groups = api("/api/v1/rules")["groups"]
    given = [
        (g["name"], [r.get("record") or r["alert"] for r in g["rules"]])
        for g in settings.rules["groups"]
    ]
    # Prometheus lists the groups in its own order, each group's rules in the file's.
    loaded = [(g["name"], [r["name"] for r in g["rules"]]) for g in groups]
    assert sorted(loaded) == sorted(given)
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups


@pytest.mark.scenario_only(
    "converge.yml's three jobs, all of them up (the stack's targets: "
    "tests/stack/test_observability.py)"
)
def test_the_scrape_jobs_are_up(api, address):
    def healthy():
        targets = api("/api/v1/targets?state=active")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health if set(health.values()) == {"up"} else None

    assert eventually(healthy) == {"node": "up", "prometheus": "up", "vllm": "up"}


@pytest.mark.scenario_only("the slot records prepare.yml writes")
def test_model_servers_are_scraped_at_their_live_slot(api, address, host):
    """phi3's record says slot green: its spare port (converge.yml); minilm has no record: its
    port, slot blue. The labels alerts and dashboards select on are kept."""

    def scraped():
        targets = api("/api/v1/targets?state=active")["activeTargets"]
        found = {
            t["labels"]["model"]: (t["scrapeUrl"], t["labels"]["slot"], t["labels"]["host"])
            for t in targets
            if t["labels"]["job"] == "vllm"
        }
        return found if len(found) == 2 else None

    assert eventually(scraped) == {
        "phi3": (f"http://{address}:9100/metrics", "green", "hx-metrics-server-01"),
        "minilm": (f"http://{address}:9100/metrics", "blue", "hx-metrics-server-01"),
    }
    assert not host.file("/etc/prometheus/file_sd/vllm-hx-llm-server-09.json").exists


@pytest.mark.scenario_only("converge.yml's alert that always fires")
def test_alerts_reach_the_alertmanager_with_the_web_password(
    api, address, password, http_from_controller
):
    """The alerting section logs in to Alertmanager (role alertmanager, same user/password)."""
    active = api("/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [a["url"] for a in active] == [f"http://{address}:{ALERTMANAGER_PORT}/api/v2/alerts"]

    def received():
        url = f"http://{address}:{ALERTMANAGER_PORT}/api/v2/alerts"
        status, body = http_from_controller(url, user=USER, password=password)
        assert status == 200, body
        return "HxpScenarioAlwaysFiring" in [a["labels"]["alertname"] for a in json.loads(body)]

    eventually(received)


def test_unit_is_hardened(assert_hardened):
    properties = assert_hardened("prometheus", "User", "ReadWritePaths")
    assert properties["User"] == "prometheus"
    assert properties["ReadWritePaths"] == "/var/lib/prometheus/metrics2"


# The host's node exporter and Alertmanager, which this scenario converges too, with Prometheus.
@pytest.mark.parametrize(
    "unit", ["prometheus", "prometheus-node-exporter", "prometheus-alertmanager"]
)
def test_unit_exposure_is_within_the_limit(assert_exposure, unit):
    assert_exposure(unit)


def test_secret_files_are_readable_by_prometheus_only(host, settings):
    paths = ["/etc/prometheus/web.yml"]
    paths += [f"/etc/prometheus/credentials/{name}" for name in settings.credentials]
    for path in paths:
        secret_file = host.file(path)
        owner = (secret_file.user, secret_file.group, secret_file.mode)
        assert owner == ("root", "prometheus", 0o640), path


def test_credentials_are_the_given_ones_only(host, password, settings):
    credentials = host.file("/etc/prometheus/credentials")
    assert (credentials.user, credentials.group, credentials.mode) == ("root", "prometheus", 0o750)
    # The scenario's prepare.yml left a stale-key there: gone.
    assert sorted(credentials.listdir()) == settings.credentials
    assert host.file("/etc/prometheus/credentials/web-password").content_string == password


def test_the_password_is_stored_hashed_and_never_logged(host, password):
    web = yaml.safe_load(host.file("/etc/prometheus/web.yml").content_string)
    prometheus_hash = web["basic_auth_users"][USER]
    assert prometheus_hash.startswith("$2b$10$")
    assert password not in host.file("/etc/prometheus/web.yml").content_string
    assert password not in host.file("/etc/prometheus/prometheus.yml").content_string
    # The same password, another service: another salt, so another hash.
    alertmanager = yaml.safe_load(host.file("/etc/prometheus/alertmanager-web.yml").content_string)
    assert alertmanager["basic_auth_users"][USER] != prometheus_hash
    journal = host.run("journalctl --no-pager -o cat")
    assert journal.rc == 0
    assert password not in journal.stdout
