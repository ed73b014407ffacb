"""Role alertmanager on the metrics host (the scenario converges it with node_exporter and
prometheus, as the stack does): Alertmanager on the host's address only, behind basic auth,
without a cluster port, in a hardened unit; an alert posted to its API is routed by the
scenario's configuration to a webhook receiver the test runs on the host.

API requests go from the controller over the lab bridge, as Prometheus reaches Alertmanager.
"""

import json
import shlex
import time
import uuid

import pytest

testinfra_hosts = ["metrics"]
PORT = 9093
USER = "hxp"
UNIT = "prometheus-alertmanager"
# The scenario routes hxp_test="webhook" to http://127.0.0.1:19093/alerts (converge.yml).
WEBHOOK_PORT = 19093
WEBHOOK_UNIT = "hxp-test-webhook"
# Prints each POSTed body on one line (to the journal of its transient unit) and answers 200.
WEBHOOK = """
import http.server, sys
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        print(body.decode().replace("\\n", " "), flush=True)
        self.send_response(200)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
"""


@pytest.fixture(scope="module")
def password(scenario_secret):
    return scenario_secret("metrics-web-password")


@pytest.fixture
def webhook(host):
    """A webhook receiver on the host's loopback, as a transient unit; yields its journal."""
    start = ["systemd-run", f"--unit={WEBHOOK_UNIT}", "--collect", "python3", "-c", WEBHOOK]
    host.run_expect([0], shlex.join([*start, str(WEBHOOK_PORT)]))
    deadline = time.monotonic() + 10
    while not host.socket(f"tcp://127.0.0.1:{WEBHOOK_PORT}").is_listening:
        assert time.monotonic() < deadline, "the webhook receiver did not start"
        time.sleep(0.2)
    yield lambda: host.check_output(f"journalctl -u {WEBHOOK_UNIT} -o cat --no-pager")
    host.run(f"systemctl stop {WEBHOOK_UNIT}")


def test_service_runs_and_is_enabled(assert_running_and_enabled):
    assert_running_and_enabled(UNIT)


def test_listens_on_the_host_address_only_and_opens_no_cluster_port(
    host, address, assert_listens_on_address_only
):
    assert_listens_on_address_only(PORT)
    main_pid = host.check_output(f"systemctl show -p MainPID --value {UNIT}")
    sockets = host.check_output(f"ss -Htulpn | grep 'pid={main_pid},' || true")
    assert [line.split()[4] for line in sockets.splitlines()] == [f"{address}:{PORT}"]


def test_the_web_user_and_password_are_required(address, password, assert_basic_auth_required):
    assert_basic_auth_required(f"http://{address}:{PORT}/-/ready", USER, password)


@pytest.mark.scenario_only(
    "converge.yml's route to a webhook on the host (the stack's alert path: "
    "tests/stack/test_observability.py)"
)
def test_an_alert_is_routed_to_the_webhook(address, password, webhook, http_from_controller):
    marker = uuid.uuid4().hex
    alert = {
        "labels": {"alertname": "HxpScenarioTest", "hxp_test": "webhook", "marker": marker},
        "annotations": {"summary": "posted by the metrics host scenario"},
    }
    url = f"http://{address}:{PORT}/api/v2/alerts"
    assert http_from_controller(url, body=[alert])[0] == 401
    status, body = http_from_controller(url, user=USER, password=password, body=[alert])
    assert status == 200, body

    deadline = time.monotonic() + 30
    while marker not in (received := webhook()):
        assert time.monotonic() < deadline, f"no notification within 30 s:\n{received}"
        time.sleep(0.5)
    notification = json.loads(next(line for line in received.splitlines() if marker in line))
    assert notification["receiver"] == "scenario-webhook"
    assert [a["labels"]["marker"] for a in notification["alerts"]] == [marker]


def test_unit_is_hardened(assert_hardened):
    properties = assert_hardened(UNIT, "User", "ReadWritePaths")
    assert properties["User"] == "prometheus"
    assert properties["ReadWritePaths"] == "/var/lib/prometheus/alertmanager"


def test_unit_exposure_is_within_the_limit(assert_exposure):
    assert_exposure(UNIT)


@pytest.mark.parametrize(
    "path", ["/etc/prometheus/alertmanager.yml", "/etc/prometheus/alertmanager-web.yml"]
)
def test_configuration_is_readable_by_alertmanager_only(host, path):
    config = host.file(path)
    assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640)


def test_the_password_is_stored_hashed_and_never_logged(host, password):
    web = host.file("/etc/prometheus/alertmanager-web.yml").content_string
    assert "$2b$10$" in web
    assert password not in web
    journal = host.run("journalctl --no-pager -o cat")
    assert journal.rc == 0
    assert password not in journal.stdout
