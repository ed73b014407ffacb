"""Role grafana on a lab host.

The Grafana server cannot be obtained on this machine (no Debian package, not on any reachable
registry). What does not need it is tested for real: the user, directories, grafana.ini, the
provisioned datasource and dashboards provider, the dashboard files (an unlisted one is removed
on the next run), file modes and the secrets' whereabouts, the hardened unit (`systemd-analyze
verify` and `security`), and the stop with a message when the archive is required but absent.
What needs a running Grafana (service, address, /api/health, login, datasource and dashboards
as Grafana sees them) runs only when the scenario was given the official release archive
(HXP_GRAFANA_ARCHIVE, see molecule.yml), and otherwise skips with that reason.

On the stack (roles/conftest.py) the settings are the rendered ones: the dashboards hxp
generates, the metrics host's Prometheus URL, user and scrape interval, and the lab's bundle,
which holds no Grafana archive.
"""

import configparser
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

testinfra_hosts = ["metrics"]
# The stack's play for this role (roles/conftest.py, converge).
STACK_PLAYBOOK = "dashboards.yml"
HOST = "hx-metrics-server-01"
PORT = 3000
SCENARIO = Path(__file__).resolve().parents[1]
BINARY = "/opt/grafana-current/bin/grafana"
DASHBOARDS_DIR = "/var/lib/grafana/dashboards/hxp"
# The prefix keeps this skip a skip under HXP_CI=1 (the repository's conftest.py).
NO_BINARY = (
    "not obtainable here: the Grafana binary is absent from the bundle (its official release "
    "archive cannot be obtained on this machine), so the server is neither installed nor "
    "started (set HXP_GRAFANA_ARCHIVE, see molecule.yml)"
)


class _ConvergeLoader(yaml.SafeLoader):
    """Reads converge.yml, whose !unsafe strings are plain strings to the role."""


_ConvergeLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


@pytest.fixture(scope="module")
def dashboards(deployed):
    """hxp_grafana_dashboards as converge.yml gives it (one source for the role and the
    tests), or as the stack's deployment rendered it."""
    if deployed is not None:
        return deployed["hxp_grafana_dashboards"]
    text = (SCENARIO / "converge.yml").read_text()
    play = yaml.load(text, Loader=_ConvergeLoader)[0]  # noqa: S506 - a SafeLoader plus !unsafe
    return play["vars"]["hxp_grafana_dashboards"]


@pytest.fixture(scope="module")
def admin_password(scenario_secret):
    return scenario_secret("grafana-admin-password")


@pytest.fixture(scope="module")
def prometheus_password(scenario_secret, deployed):
    return scenario_secret("prometheus-password" if deployed is None else "metrics-web-password")


@pytest.fixture(scope="module")
def datasource(address, deployed):
    """Where the datasource points: converge.yml's Prometheus URL, the role's defaults for the
    rest; or the stack's rendered settings."""
    if deployed is None:
        return {"url": f"http://{address}:9090", "user": "hxp", "interval": "15s"}
    return {
        "url": deployed["hxp_grafana_prometheus_url"],
        "user": deployed["hxp_grafana_prometheus_user"],
        "interval": f"{deployed['hxp_grafana_scrape_interval_s']}s",
    }


@pytest.fixture(scope="module")
def secrets(host, admin_password, prometheus_password):
    """Every secret the role handles, as a string that any copy of it contains."""
    secret_key = host.file("/etc/grafana/secret_key").content_string.strip()
    return {
        "admin password": admin_password,
        # Its escaped copy ($ -> $$) in the provisioning file contains this part too.
        "Prometheus password": prometheus_password.split("$")[0],
        "secret key": secret_key,
    }


@pytest.fixture(scope="module")
def grafana_api(address, http_on_host):
    """grafana_api(path, user=..., password=...): (status, body) of a request made on the host."""
    return lambda path, **auth: http_on_host(f"http://{address}:{PORT}{path}", **auth)


def test_dedicated_user(assert_system_user):
    assert_system_user("grafana", "/var/lib/grafana")


@pytest.mark.parametrize(
    ("path", "owner", "group", "mode"),
    [
        ("/var/lib/grafana", "grafana", "grafana", 0o750),
        ("/var/lib/grafana/dashboards", "root", "grafana", 0o750),
        (DASHBOARDS_DIR, "root", "grafana", 0o750),
        ("/etc/grafana", "root", "grafana", 0o750),
        ("/etc/grafana/provisioning", "root", "grafana", 0o750),
        ("/etc/grafana/provisioning/datasources", "root", "grafana", 0o750),
        ("/etc/grafana/provisioning/dashboards", "root", "grafana", 0o750),
    ],
)
def test_directories(assert_directory, path, owner, group, mode):
    assert_directory(path, owner, group, mode)


def private_file(host, path):
    """The file's content, after checking that only root and Grafana can read it."""
    config_file = host.file(path)
    assert (config_file.user, config_file.group, config_file.mode) == ("root", "grafana", 0o640)
    return config_file.content_string


def test_grafana_ini_is_rendered_from_the_settings(host, address, admin_password):
    ini = configparser.RawConfigParser()
    ini.read_string(private_file(host, "/etc/grafana/grafana.ini"))
    assert dict(ini["server"]) == {
        "protocol": "http",
        "http_addr": address,
        "http_port": str(PORT),
    }
    assert ini["paths"]["provisioning"] == "/etc/grafana/provisioning"
    assert ini["paths"]["data"] == "/var/lib/grafana"
    # Triple quotes: Grafana reads what is between them literally.
    assert ini["security"]["admin_user"] == '"""admin"""'
    assert ini["security"]["admin_password"] == f'"""{admin_password}"""'
    # Grafana reads the key from this file: a path, not a secret.
    assert ini["security"]["secret_key"] == "$__file{/etc/grafana/secret_key}"  # noqa: S105
    assert ini["analytics"]["reporting_enabled"] == "false"
    assert ini["analytics"]["check_for_updates"] == "false"
    assert ini["auth.anonymous"]["enabled"] == "false"
    assert ini["log"]["mode"] == "console"


def test_secret_key_is_private_and_long(host):
    key = private_file(host, "/etc/grafana/secret_key")
    assert re.fullmatch(r"[A-Za-z0-9]{48}", key)


def test_datasource_is_provisioned(host, datasource, prometheus_password):
    provisioning = yaml.safe_load(
        private_file(host, "/etc/grafana/provisioning/datasources/hxp.yml")
    )
    assert provisioning["apiVersion"] == 1
    (provisioned,) = provisioning["datasources"]
    assert provisioned == {
        "name": "Prometheus",
        "type": "prometheus",
        "uid": "hxp-prometheus",
        "access": "proxy",
        "url": datasource["url"],
        "isDefault": True,
        "editable": False,
        # timeInterval: the default hxp_grafana_scrape_interval_s; converge.yml does not set it.
        "jsonData": {"httpMethod": "POST", "timeInterval": datasource["interval"]},
        "basicAuth": True,
        "basicAuthUser": datasource["user"],
        # Grafana expands $NAME in provisioning files and reads $$ as $.
        "secureJsonData": {"basicAuthPassword": prometheus_password.replace("$", "$$")},
    }


def test_dashboards_provider_points_at_the_dashboards(host):
    provisioning = yaml.safe_load(
        private_file(host, "/etc/grafana/provisioning/dashboards/hxp.yml")
    )
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARDS_DIR
    assert provider["allowUiUpdates"] is False


def test_dashboards_are_written(host, dashboards):
    assert sorted(host.file(DASHBOARDS_DIR).listdir()) == sorted(dashboards)
    for name, model in dashboards.items():
        assert json.loads(private_file(host, f"{DASHBOARDS_DIR}/{name}")) == model
    written = "".join(host.file(f"{DASHBOARDS_DIR}/{name}").content_string for name in dashboards)
    assert '"legendFormat": "{{model}}"' in written, "Grafana's own template syntax, unevaluated"


def test_no_secret_in_a_world_readable_file(host, secrets):
    patterns = " ".join(f"-e {shlex.quote(value)}" for value in secrets.values())
    found = host.run(
        "find /etc /var /opt /srv /usr/local /root /home /tmp -xdev -type f -perm -o=r "
        f"-exec grep -lF {patterns} {{}} +"
    )
    assert found.stdout.split() == [], f"world-readable files holding a secret: {found.stdout}"


def test_secrets_are_never_logged(host, secrets):
    journal = host.run("journalctl --no-pager -o cat").stdout
    for name, value in secrets.items():
        assert value not in journal, f"the {name} is in the journal"


def test_unit_is_hardened(assert_hardened):
    properties = assert_hardened("grafana-server", "User", "ReadWritePaths", "ExecStart")
    assert properties["User"] == "grafana"
    assert properties["ReadWritePaths"].split() == ["/var/lib/grafana"]
    assert f"path={BINARY}" in properties["ExecStart"]
    assert (
        "argv[]=/opt/grafana-current/bin/grafana server --homepath /opt/grafana-current "
        "--config /etc/grafana/grafana.ini" in properties["ExecStart"]
    )


# The unit as installed, whether or not the bundle held the server to run in it.
def test_unit_exposure_is_within_the_limit(assert_exposure):
    assert_exposure("grafana-server")


def test_unit_exposure_is_at_most_2(host):
    report = host.run("systemd-analyze security --no-pager grafana-server.service")
    exposure = re.search(
        r"Overall exposure level for grafana-server\.service: ([\d.]+)", report.stdout
    )
    assert exposure, report.stdout + report.stderr
    assert float(exposure.group(1)) <= 2.0, report.stdout


def test_unit_passes_systemd_analyze_verify(assert_units_verify):
    assert_units_verify(BINARY, "grafana-server.service")


def test_grafana_is_started_only_with_its_binary(host):
    installed = host.file(BINARY).exists
    assert host.service("grafana-server").is_enabled == installed
    assert host.service("grafana-server").is_running == installed


def test_next_run_removes_unlisted_dashboards_and_keeps_the_rest(
    host, dashboards, secrets, converge, deployed
):
    """A dashboard dropped from hxp_grafana_dashboards leaves a file behind: the next run
    removes it, and changes nothing else (the secret key above all)."""
    host.run_expect([0], f'echo \'{{"title": "retired"}}\' > {DASHBOARDS_DIR}/retired.json')
    secret_key = host.file("/etc/grafana/secret_key").sha256sum
    run = converge({})
    assert run.returncode == 0, run.stdout[-3000:]
    assert run.recap(HOST)["changed"] == 1, run.stdout[-3000:]
    assert sorted(host.file(DASHBOARDS_DIR).listdir()) == sorted(dashboards)
    assert host.file("/etc/grafana/secret_key").sha256sum == secret_key
    output = " ".join(run.stdout.split())
    if not host.file(BINARY).exists:  # the role says so; on the stack, hxp deploy's summary
        assert (
            "Grafana was not installed: the bundle has no Grafana archive"
            if deployed is None
            else "Grafana is set up but its server is not installed nor started"
        ) in output
    for name, value in secrets.items():
        assert value not in run.stdout + run.stderr, f"the {name} is in the play's output"


def test_a_required_archive_stops_the_play_only_when_it_is_absent(host, converge, deployed):
    run = converge({"hxp_grafana_require_binary": True})
    if host.file(BINARY).exists:  # the scenario was given the archive: nothing is absent
        assert run.returncode == 0, run.stdout[-3000:]
        return
    assert run.returncode == 2, run.stdout[-3000:]
    assert run.recap(HOST)["changed"] == 0
    output = " ".join((run.stdout + run.stderr).split())
    # The scenario sets no bundle; the stack's lab has one, without Grafana.
    assert "no bundle is set (bundle.path in hxp.yml)" in output or (
        deployed is not None and "holds no artifact grafana" in output
    )
    assert "Add to the bundle spec the artifact {name: grafana, kind: archive" in output
    assert "grafana-VERSION.linux-amd64.tar.gz" in output


# ---------------------------------------------------------------- needs the Grafana server


@pytest.mark.usefixtures("running")
def test_grafana_runs_and_is_enabled(assert_running_and_enabled):
    assert_running_and_enabled("grafana-server")


@pytest.mark.usefixtures("running")
def test_grafana_listens_on_the_configured_address_only(assert_listens_on_address_only):
    assert_listens_on_address_only(PORT)


@pytest.mark.usefixtures("running")
def test_healthy_and_the_admin_password_is_required(grafana_api, admin_password):
    status, body = grafana_api("/api/health")
    assert (status, json.loads(body)["database"]) == (200, "ok")
    assert grafana_api("/api/user")[0] == 401
    wrong = {"user": "admin", "password": "not-it"}
    assert grafana_api("/api/user", **wrong)[0] == 401
    assert grafana_api("/api/user", user="admin", password=admin_password)[0] == 200


@pytest.mark.usefixtures("running")
def test_grafana_has_the_datasource_and_the_dashboards(
    grafana_api, datasource, admin_password, dashboards
):
    auth = {"user": "admin", "password": admin_password}
    status, body = grafana_api("/api/datasources/uid/hxp-prometheus", **auth)
    assert status == 200, body
    provisioned = json.loads(body)
    assert (provisioned["type"], provisioned["basicAuth"]) == ("prometheus", True)
    assert provisioned["url"] == datasource["url"]
    status, body = grafana_api("/api/search?type=dash-db", **auth)
    assert status == 200, body
    assert sorted(d["uid"] for d in json.loads(body)) == sorted(
        m["uid"] for m in dashboards.values()
    )
