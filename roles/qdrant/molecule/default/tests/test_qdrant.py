"""Role qdrant on a lab host.

The Qdrant server binary cannot be obtained on this machine (no Debian package, not on any
reachable registry). What does not need it is tested for real: the user, directories, the
rendered config.yaml, the hardened units (`systemd-analyze verify`), the secret files, and the
bundle's checksum check, which stops the play before the host changes. What needs a running
Qdrant (service, addresses, API key, /readyz, collections, snapshots) runs only when the
scenario was given the official release archive (HXP_QDRANT_ARCHIVE, see molecule.yml), and
otherwise skips with that reason.
"""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

HOST = "hx-vectordb-server-01"
HTTP_PORT = 6333
GRPC_PORT = 6334
EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
BINARY = "/opt/qdrant/current/qdrant"
# The prefix keeps this skip a skip under HXP_CI=1 (the repository's conftest.py).
NO_BINARY = (
    "not obtainable here: the Qdrant binary is not installed, its official release archive is "
    "not in the bundle (set HXP_QDRANT_ARCHIVE, see molecule.yml)"
)


@pytest.fixture(scope="module")
def api_key(scenario_secret):
    return scenario_secret("qdrant-api-key")


@pytest.fixture(scope="module")
def qdrant_api(address, http_on_host):
    """qdrant_api(path, api_key=None): (status, body) of a request made on the host."""

    def request(path, api_key=None):
        headers = {"api-key": api_key} if api_key else {}
        return http_on_host(f"http://{address}:{HTTP_PORT}{path}", headers=headers)

    return request


def test_dedicated_user(assert_system_user):
    assert_system_user("qdrant", "/var/lib/qdrant")


@pytest.mark.parametrize(
    ("path", "owner", "group", "mode"),
    [
        ("/var/lib/qdrant", "qdrant", "qdrant", 0o750),
        ("/var/lib/qdrant/storage", "qdrant", "qdrant", 0o750),
        ("/var/backups/hxp/qdrant", "qdrant", "qdrant", 0o750),
        ("/etc/qdrant", "root", "qdrant", 0o750),
        ("/opt/qdrant", "root", "root", 0o755),
    ],
)
def test_directories(assert_directory, path, owner, group, mode):
    assert_directory(path, owner, group, mode)


def test_config_is_rendered_from_the_settings(host, address, api_key):
    config_file = host.file("/etc/qdrant/config.yaml")
    assert (config_file.user, config_file.group, config_file.mode) == ("root", "qdrant", 0o640)
    config = yaml.safe_load(config_file.content_string)
    assert config["service"] == {
        "host": address,
        "http_port": HTTP_PORT,
        "grpc_port": GRPC_PORT,
        "api_key": api_key,
        "enable_cors": False,
    }
    assert config["storage"] == {
        "storage_path": "/var/lib/qdrant/storage",
        "snapshots_path": "/var/backups/hxp/qdrant",
    }
    assert config["telemetry_disabled"] is True


def test_snapshot_environment_is_private(host, address, api_key):
    env_file = host.file("/etc/qdrant/snapshot.env")
    assert (env_file.user, env_file.mode) == ("qdrant", 0o600)
    assert f"QDRANT_API_KEY={api_key}" in env_file.content_string.splitlines()
    assert f"QDRANT_URL=http://{address}:{HTTP_PORT}" in env_file.content_string.splitlines()


def test_the_api_key_is_never_logged(host, api_key):
    assert api_key not in host.run("journalctl --no-pager -o cat").stdout


def test_qdrant_unit_is_hardened(assert_hardened):
    properties = assert_hardened("qdrant", "User", "ReadWritePaths", "ExecStart")
    assert properties["User"] == "qdrant"
    assert sorted(properties["ReadWritePaths"].split()) == [
        "/var/backups/hxp/qdrant",
        "/var/lib/qdrant",
        "/var/lib/qdrant/storage",
    ]
    assert "path=/opt/qdrant/current/qdrant" in properties["ExecStart"]
    assert "--config-path /etc/qdrant/config.yaml" in properties["ExecStart"]


# The unit as installed, whether or not the bundle held the server to run in it.
@pytest.mark.parametrize("unit", ["qdrant", "hxp-qdrant-snapshot.service"])
def test_unit_exposure_is_within_the_limit(assert_exposure, unit):
    assert_exposure(unit)


def test_units_pass_systemd_analyze_verify(assert_units_verify):
    assert_units_verify(
        BINARY, "qdrant.service", "hxp-qdrant-snapshot.service", "hxp-qdrant-snapshot.timer"
    )


def test_qdrant_is_started_only_with_its_binary(host):
    installed = host.file(BINARY).exists
    assert host.service("qdrant").is_enabled == installed
    assert host.service("qdrant").is_running == installed


# ---------------------------------------------------------------- the bundle's checksum check


def build_bundle(tmp_path, *, with_qdrant):
    """A real bundle whose `qdrant` artifact is a stand-in archive (a text file, not Qdrant):
    the check under test reads checksums, never the archive's content."""
    source = tmp_path / "stand-in"
    source.mkdir()
    (source / "README").write_text("stand-in for the Qdrant release archive; never unpacked\n")
    archive = tmp_path / "qdrant-x86_64-unknown-linux-gnu.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "README", arcname="README")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "weights.bin").write_bytes(b"\0" * 1024)
    artifacts = [{"name": "other", "kind": "model-dir", "version": "1", "source": "models"}]
    if with_qdrant:
        artifacts.append(
            {"name": "qdrant", "kind": "archive", "version": "0.0.0", "source": archive.name}
        )
    spec = tmp_path / "bundle.yml"
    spec.write_text(yaml.safe_dump({"artifacts": artifacts}))
    out = tmp_path / "bundle"
    subprocess.run(
        [sys.executable, "-m", "hxp_runtime.cli", "bundle", "build", str(spec), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


FRESH = {
    "hxp_qdrant_user": "qdrant-rejected",
    "hxp_qdrant_home": "/var/lib/qdrant-rejected",
    "hxp_qdrant_storage_dir": "/var/lib/qdrant-rejected/storage",
    "hxp_qdrant_snapshot_dir": "/var/backups/hxp/qdrant-rejected",
    "hxp_qdrant_config_dir": "/etc/qdrant-rejected",
    "hxp_qdrant_install_dir": "/opt/qdrant-rejected",
}


def converge_with(converge, bundle):
    """The scenario's converge playbook with another bundle, on paths the role never used."""
    return converge({**FRESH, "hxp_bundle_path": str(bundle), "hxp_qdrant_require_binary": True})


def assert_host_unchanged(host, run):
    recap = run.recap(HOST)
    assert (recap["changed"], recap["failed"]) == (0, 1)
    for path in FRESH.values():
        if path.startswith("/"):
            assert not host.file(path).exists, path
    assert not host.user("qdrant-rejected").exists


def test_one_changed_byte_stops_the_play_before_the_host_changes(host, tmp_path, converge):
    bundle = build_bundle(tmp_path, with_qdrant=True)
    archive = bundle / "archives" / "qdrant-x86_64-unknown-linux-gnu.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    run = converge_with(converge, bundle)
    assert run.returncode == 2, run.stdout
    output = " ".join((run.stdout + run.stderr).split())
    assert "artifact 'qdrant' (archive 0.0.0)" in output
    assert "the file is corrupted or was changed" in output
    assert_host_unchanged(host, run)


def test_a_missing_archive_stops_the_play_before_the_host_changes(host, tmp_path, converge):
    run = converge_with(converge, build_bundle(tmp_path, with_qdrant=False))
    assert run.returncode == 2, run.stdout
    output = " ".join((run.stdout + run.stderr).split())
    assert "has no artifact 'qdrant' (it holds: other)" in output
    assert_host_unchanged(host, run)


# ---------------------------------------------------------------- needs the Qdrant binary


@pytest.mark.usefixtures("running")
def test_qdrant_runs_and_is_enabled(host, assert_running_and_enabled):
    assert_running_and_enabled("qdrant")
    assert host.service("hxp-qdrant-snapshot.timer").is_enabled


@pytest.mark.usefixtures("running")
def test_qdrant_listens_on_the_configured_address_only(assert_listens_on_address_only):
    assert_listens_on_address_only(HTTP_PORT, GRPC_PORT)


@pytest.mark.usefixtures("running")
def test_ready_and_the_api_key_is_required(qdrant_api, api_key):
    assert qdrant_api("/readyz")[0] == 200
    assert qdrant_api("/collections")[0] in {401, 403}
    assert qdrant_api("/collections", api_key="not-it")[0] in {401, 403}
    assert qdrant_api("/collections", api_key=api_key)[0] == 200


@pytest.mark.usefixtures("running")
def test_collections_are_created(qdrant_api, api_key):
    for name in ("documents", "conversations"):
        status, body = qdrant_api(f"/collections/{name}", api_key=api_key)
        assert status == 200
        vectors = json.loads(body)["result"]["config"]["params"]["vectors"]
        assert vectors == {"size": 384, "distance": "Cosine"}


@pytest.mark.usefixtures("running")
def test_snapshot_backup_writes_a_snapshot(host):
    run = host.run("systemctl start hxp-qdrant-snapshot.service")
    assert run.rc == 0, host.run("journalctl -u hxp-qdrant-snapshot --no-pager").stdout
    assert host.run("ls /var/backups/hxp/qdrant/*.snapshot").rc == 0
