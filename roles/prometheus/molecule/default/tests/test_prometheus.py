"""Role prometheus on a lab host: Prometheus on the host's address only, behind basic auth,
with the scenario's retention, rules, scrape jobs and Alertmanager; a hardened unit; the web
password only in files Prometheus alone reads, and hashed per host and service.

Requests go from the controller over the lab bridge, as the users of the API reach it.
"""

import json
import time

import pytest
import yaml

PORT = 9090
ALERTMANAGER_PORT = 9093
USER = "hxp"


@pytest.fixture(scope="module")
def password(scenario_secret):
    return scenario_secret("metrics-web-password")


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


def test_arguments_retention_and_intervals(api, address):
    flags = api("/api/v1/status/flags")
    assert flags["web.listen-address"] == f"{address}:{PORT}"
    assert flags["web.config.file"] == "/etc/prometheus/web.yml"
    assert flags["storage.tsdb.retention.time"] == "2d"
    assert flags["storage.tsdb.retention.size"] == "1GiB"
    config = yaml.safe_load(api("/api/v1/status/config")["yaml"])
    assert config["global"]["scrape_interval"] == "2s"
    assert config["global"]["evaluation_interval"] == "2s"
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]


def test_the_scenario_rules_are_loaded(api):
    groups = api("/api/v1/rules")["groups"]
    assert [(g["name"], [r["name"] for r in g["rules"]]) for g in groups] == [
        ("hxp-scenario", ["job:up:sum", "HxpScenarioAlwaysFiring"])
    ]


def test_the_scrape_jobs_are_up(api, address):
    def healthy():
        targets = api("/api/v1/targets?state=active")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health if set(health.values()) == {"up"} else None

    assert eventually(healthy) == {"node": "up", "prometheus": "up", "vllm": "up"}


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


@pytest.mark.parametrize(
    "path",
    [
        "/etc/prometheus/web.yml",
        "/etc/prometheus/credentials/web-password",
        "/etc/prometheus/credentials/scenario-token",
    ],
)
def test_secret_files_are_readable_by_prometheus_only(host, path):
    secret_file = host.file(path)
    assert (secret_file.user, secret_file.group, secret_file.mode) == ("root", "prometheus", 0o640)


def test_credentials_are_the_given_ones_only(host, password):
    credentials = host.file("/etc/prometheus/credentials")
    assert (credentials.user, credentials.group, credentials.mode) == ("root", "prometheus", 0o750)
    assert sorted(credentials.listdir()) == ["scenario-token", "web-password"]  # stale-key: gone
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
