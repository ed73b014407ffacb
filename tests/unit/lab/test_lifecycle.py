"""Claiming a lab's name and network, recording what `up` creates, and what needs no root."""

from __future__ import annotations

import ipaddress
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from hxp_runtime.certs import check_pair
from hxp_runtime.lab import lifecycle
from hxp_runtime.lab.errors import LabError
from hxp_runtime.lab.image import BaseImage
from hxp_runtime.lab.lifecycle import HostStatus, Lab
from hxp_runtime.lab.spec import LabSpec
from hxp_runtime.lab.state import LabState, load_state, registry_owner, save_state
from hxp_runtime.lab.supervisor import supervisor_marker
from tests.unit.lab.conftest import LAB_CONFIG, Sleeper, SpecOf


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


@pytest.fixture
def lab(tmp_path: Path, spec: LabSpec) -> Lab:
    """A lab whose registry is in tmp_path."""
    lab = Lab(spec, BaseImage(tmp_path / "cache", "http://a/debian", {}), log=lambda line: None)
    lab.registry = tmp_path / "run"
    return lab


def machine_has(
    monkeypatch: pytest.MonkeyPatch, networks: list[str], links: set[str] | None = None
) -> None:
    used = [net(n) for n in networks]
    monkeypatch.setattr(lifecycle, "used_networks", lambda: (used, links or set()))


def test_nothing_to_show_or_remove_without_state(lab: Lab, tmp_path: Path) -> None:
    assert lab.status() is None
    assert lab.down() is False
    with pytest.raises(LabError, match="no lab state in"):
        Lab.recorded(tmp_path / "nowhere", lab.image)


def test_host_status_json() -> None:
    status = HostStatus("web", "10.77.1.10", True, "running")
    assert status.as_json() == {
        "name": "web",
        "address": "10.77.1.10",
        "running": True,
        "system_state": "running",
    }


def test_a_new_lab_records_itself_and_the_directories_it_made(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HXP_LAB_RUN", "run-7")
    machine_has(monkeypatch, ["192.168.1.0/24"], {"eth0"})
    lab._choose_network(False)
    assert lab.spec.bridge == "hxpunit0"  # its own network is free: kept
    state = lab._record_new()
    assert state.run == "run-7"
    state_root = lab.spec.state_dir.parent
    assert state.created_dirs == [str(state_root)]  # tmp_path/state was missing
    assert load_state(lab.spec.state_dir) == state
    assert registry_owner(lab.registry, "unit-lab") == lab.spec.state_dir


def test_auto_network_moves_the_lab_to_a_free_subnet(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine_has(monkeypatch, ["10.77.1.0/24"], {"hxpbr2"})
    lab._choose_network(True)
    assert lab.spec.bridge == "hxpbr3"
    assert [str(h.address) for h in lab.spec.hosts] == ["10.77.3.10", "10.77.3.11"]


def test_a_taken_bridge_or_subnet_is_refused(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    machine_has(monkeypatch, [], {"hxpunit0"})
    with pytest.raises(LabError, match="'hxpunit0' already exists and is not this lab's"):
        lab._choose_network(False)
    machine_has(monkeypatch, ["10.99.0.0/16"])
    with pytest.raises(LabError, match=r"overlaps 10\.99\.0\.0/16.*choose another lab.gateway"):
        lab._choose_network(False)


def test_a_recorded_lab_is_adopted_with_its_network(lab: Lab, spec: LabSpec) -> None:
    moved = spec.on_network("hxpbr4", ipaddress.IPv4Interface("10.77.4.1/24"))
    state = LabState.of(moved)
    assert lab._adopt(state, auto_network=True) is state
    assert lab.spec.bridge == "hxpbr4"
    assert lab.spec.secret_files == spec.secret_files  # the state does not record them
    assert registry_owner(lab.registry, "unit-lab") == spec.state_dir


def test_a_recorded_lab_that_differs_from_the_config_is_refused(lab: Lab, spec: LabSpec) -> None:
    moved = spec.on_network("hxpbr4", ipaddress.IPv4Interface("10.77.4.1/24"))
    with pytest.raises(LabError, match="run `hxp lab down` on it first"):
        lab._adopt(LabState.of(moved), auto_network=False)
    fewer = replace(spec, hosts=spec.hosts[:1])
    with pytest.raises(LabError, match="other hosts or network"):
        lab._adopt(LabState.of(fewer), auto_network=True)


def test_missing_secret_files_are_created_and_recorded(
    lab: Lab, spec: LabSpec, tmp_path: Path
) -> None:
    present = tmp_path / "secrets/present"
    present.parent.mkdir()
    present.write_text("kept")
    missing = tmp_path / "secrets/new/db"
    lab.spec = replace(spec, secret_files=(present, missing))
    state = LabState.of(lab.spec)
    lab.spec.state_dir.mkdir(parents=True)
    lab._ensure_secret_files(state)
    assert present.read_text() == "kept"
    assert len(missing.read_text()) >= 32
    assert stat.S_IMODE(missing.stat().st_mode) == 0o600
    assert stat.S_IMODE(missing.parent.stat().st_mode) == 0o700
    assert state.created_secret_files == [str(missing)]
    assert state.created_dirs == [str(missing.parent)]
    assert load_state(lab.spec.state_dir) == state  # recorded before they were made


def test_a_namesake_elsewhere_with_state_blocks_the_name(
    lab: Lab, spec: LabSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other/unit-lab"
    other.mkdir(parents=True)
    save_state(other, LabState.of(replace(spec, state_dir=other)))
    lab_elsewhere = Lab(replace(spec, state_dir=other), lab.image)
    lab_elsewhere.registry = lab.registry
    lab_elsewhere._register(LabState.of(spec))
    machine_has(monkeypatch, [])
    with pytest.raises(LabError, match=f"already up from {other}; change `name`"):
        lab._claim(auto_network=False)
    assert not lab.spec.state_dir.exists()


def test_up_keeps_a_ca_and_issues_router_tls_with_it(
    lab: Lab, spec_of: SpecOf, tmp_path: Path
) -> None:
    certificate, key = tmp_path / "tls/router.crt", tmp_path / "tls/router.key"
    lab.spec = spec_of(
        LAB_CONFIG + f"router:\n  tls: {{certificate: 'file:{certificate}', key: 'file:{key}'}}\n"
    )
    assert key not in lab.spec.secret_files  # issued by the CA, not random
    state = LabState.of(lab.spec)
    lab.spec.state_dir.mkdir(parents=True)
    lab._ensure_tls(state)
    ca = lab.spec.ca_dir
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert state.created_secret_files == [str(certificate), str(key)]
    # What render checks: the pair matches and covers the router host's address.
    problems = check_pair(
        certificate.read_bytes(), key.read_bytes(), ipaddress.IPv4Address("10.99.5.10"), "llm-1"
    )
    assert problems.certificate == problems.key == []
    issued = x509.load_pem_x509_certificate(certificate.read_bytes())
    authority = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    issued.verify_directly_issued_by(authority)
    # Again: the same CA, and the pair as it is.
    before = (ca / "ca.crt").read_bytes(), certificate.read_bytes()
    lab._ensure_tls(LabState.of(lab.spec))
    assert ((ca / "ca.crt").read_bytes(), certificate.read_bytes()) == before


def test_up_issues_the_database_and_cache_pairs_and_writes_their_ca(
    lab: Lab, spec_of: SpecOf, tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    lab.spec = spec_of(
        LAB_CONFIG.replace(
            '  router_password: "file:/tmp/hxp-unit/secrets/db"\n',
            '  router_password: "file:/tmp/hxp-unit/secrets/db"\n'
            f"  tls: {{certificate: 'file:{tls}/pg.crt', key: 'file:{tls}/pg.key', "
            f"ca: 'file:{tls}/ca.crt'}}\n",
        )
        + "cache:\n  password: file:/tmp/hxp-unit/secrets/redis\n"
        f"  tls: {{certificate: 'file:{tls}/redis.crt', key: 'file:{tls}/redis.key', "
        f"ca: 'file:{tls}/ca.crt'}}\n"
    )
    issued = {tls / n for n in ("pg.crt", "pg.key", "redis.crt", "redis.key", "ca.crt")}
    assert not issued & set(lab.spec.secret_files)  # from the CA, not random
    state = LabState.of(lab.spec)
    lab.spec.state_dir.mkdir(parents=True)
    lab._ensure_tls(state)
    assert set(map(Path, state.created_secret_files)) == issued
    assert (tls / "ca.crt").read_bytes() == (lab.spec.ca_dir / "ca.crt").read_bytes()
    assert stat.S_IMODE((tls / "redis.key").stat().st_mode) == 0o600
    # PostgreSQL at its host's address; Redis on the router's host at loopback (and its address).
    for stem, address, host in (
        ("pg", "10.99.5.11", "db-1"),
        ("redis", "127.0.0.1", "llm-1"),
        ("redis", "10.99.5.10", "llm-1"),
    ):
        problems = check_pair(
            (tls / f"{stem}.crt").read_bytes(),
            (tls / f"{stem}.key").read_bytes(),
            ipaddress.IPv4Address(address),
            host,
        )
        assert problems.certificate == problems.key == [], stem


def test_power_off_stops_only_the_named_hosts_of_a_lab_that_is_up(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, sleeper: Sleeper
) -> None:
    with pytest.raises(LabError, match="lab 'unit-lab' is not up"):
        lab.power_off(["llm-1"])
    machine_has(monkeypatch, [])
    lab._choose_network(False)
    lab._record_new()
    with pytest.raises(LabError, match="has no host 'mail'; its hosts: llm-1, db-1"):
        lab.power_off(["llm-1", "mail"])
    # Stand-ins for the hosts' supervisors: processes with each one's marker, in its pid file.
    supervisors = {}
    for host in lab.spec.hosts:
        supervisors[host.name] = sleeper(supervisor_marker(lab.spec, host))
        machine = lab.machine(host)
        machine.directory.mkdir(parents=True)
        machine.pid_file.write_text(f"{supervisors[host.name].pid}\n")
    assert lab.power_off(["llm-1", "llm-1"]) == ["llm-1"]
    assert lab.machine(lab.spec.host("llm-1")).supervisor_pid() is None
    assert lab.machine(lab.spec.host("db-1")).supervisor_pid() == supervisors["db-1"].pid
    assert lab.power_off(["llm-1"]) == []  # not running: nothing to stop
