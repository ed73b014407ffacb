"""The lab of an hxp.yml: hosts, names and addresses, the rules the lab adds, a free network."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from hxp_runtime.config import ConfigError
from hxp_runtime.lab.errors import LabError
from hxp_runtime.lab.spec import LabSpec, file_secrets, free_network, load_lab, rebase
from tests.unit.lab.conftest import LAB_CONFIG, SpecOf

REPO = Path(__file__).resolve().parents[3]


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def test_spec_from_config(tmp_path: Path, spec: LabSpec) -> None:
    assert spec.name == "unit-lab"
    assert spec.bridge == "hxpunit0"
    assert spec.state_dir == tmp_path / "state" / "unit-lab"
    assert [(h.name, str(h.address), h.groups) for h in spec.hosts] == [
        ("llm-1", "10.99.5.10", ("llm", "cache")),
        ("db-1", "10.99.5.11", ("database",)),
    ]
    assert spec.secret_files == (Path("/tmp/hxp-unit/secrets/db"),)
    assert spec.apt_proxy_url == "http://10.99.5.1:3142"
    assert spec.hosts[0].machine(spec.name) == "unit-lab-llm-1"
    assert spec.key_file == spec.state_dir / "id_ed25519"
    assert spec.inventory_file == spec.state_dir / "inventory.yml"


def test_lab_inventory_is_a_valid_config() -> None:
    spec = load_lab(REPO / "inventory" / "lab" / "hxp.yml")
    assert spec.bridge == "hxpbr0"
    assert spec.state_dir == REPO / ".lab" / "hxp-lab"
    groups = {g for h in spec.hosts for g in h.groups}
    assert {"llm", "database", "vector", "metrics"} <= groups
    assert all(Path(p).is_absolute() for p in spec.secret_files)


def test_without_a_lab_section_the_defaults_apply(tmp_path: Path, spec_of: SpecOf) -> None:
    lab_section = "lab:\n  bridge: hxpunit0\n  gateway: 10.99.5.1/24\n  state_dir: state\n"
    assert lab_section in LAB_CONFIG
    spec = spec_of(LAB_CONFIG.replace(lab_section, "").replace("10.99.5.", "10.77.0."))
    assert (spec.bridge, str(spec.gateway)) == ("hxpbr0", "10.77.0.1/24")
    assert spec.state_dir == tmp_path / ".lab" / "unit-lab"


def test_an_absolute_state_dir_is_kept(tmp_path: Path, spec_of: SpecOf) -> None:
    elsewhere = tmp_path / "elsewhere"
    spec = spec_of(LAB_CONFIG.replace("state_dir: state", f"state_dir: {elsewhere}"))
    assert spec.state_dir == elsewhere / "unit-lab"


@pytest.mark.parametrize(
    ("address", "where", "message"),
    [
        ("10.99.6.10", ":9: hosts[0].address:", "not in the lab subnet 10.99.5.0/24"),
        ("10.99.5.1", ":9: hosts[0].address:", "is the bridge's own address"),
        ("10.99.5.255", ":9: hosts[0].address:", "not a host address"),
        ("10.99.5.0", ":9: hosts[0].address:", "not a host address"),
        ("fd00::1", ":9: hosts[0].address:", "IPv6 host addresses are not supported"),
    ],
)
def test_bad_addresses_name_the_line(
    spec_of: SpecOf, address: str, where: str, message: str
) -> None:
    text = LAB_CONFIG.replace("address: 10.99.5.10", f"address: {address}")
    with pytest.raises(ConfigError) as caught:
        spec_of(text)
    rendered = caught.value.render()
    assert f"hxp.yml{where} " in rendered
    assert message in rendered


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        ("name: db-1", "name: llm-1", "hosts[1].name", "name llm-1 is already used by hosts[0]"),
        (
            "address: 10.99.5.11",
            "address: 10.99.5.10",
            "hosts[1].address",
            "address 10.99.5.10 is already used by hosts[0]",
        ),
    ],
)
def test_a_name_or_address_used_twice_names_the_first_user(
    spec_of: SpecOf, old: str, new: str, where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        spec_of(LAB_CONFIG.replace(old, new))
    rendered = caught.value.render()
    assert where in rendered
    assert message in rendered


def test_machine_names_must_fit_nspawn(spec_of: SpecOf) -> None:
    # 64 characters is systemd-nspawn's limit on "<lab>-<host>".
    fits = "h" * (64 - len("unit-lab-"))
    spec = spec_of(LAB_CONFIG.replace("name: llm-1", f"name: {fits}"))
    assert len(spec.hosts[0].machine(spec.name)) == 64
    with pytest.raises(ConfigError, match="must fit 64 characters"):
        spec_of(LAB_CONFIG.replace("name: llm-1", f"name: {fits}h"))


def test_ssh_user_is_rejected(spec_of: SpecOf) -> None:
    text = LAB_CONFIG.replace(
        "    accelerator: cpu\n", "    accelerator: cpu\n    ssh_user: debian\n"
    )
    with pytest.raises(ConfigError, match="lab hosts take SSH as root"):
        spec_of(text)


def test_subnet_too_small(spec_of: SpecOf) -> None:
    text = LAB_CONFIG.replace("10.99.5.1/24", "10.99.5.1/30").replace("10.99.5.11", "10.99.5.2")
    with pytest.raises(ConfigError, match="too small"):
        spec_of(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [("- just\n- a list\n", "must be a mapping"), ("name: [unclosed\n", "hxp.yml:")],
)
def test_a_file_that_is_no_lab_names_itself(spec_of: SpecOf, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        spec_of(text)
    assert message in caught.value.render()


def test_file_secrets_finds_absolute_file_references_anywhere() -> None:
    document = {
        "a": "file:/run/one",
        "b": ["env:TWO", {"c": "file:/run/three"}, "file:relative"],
        "d": 4,
        "e": "file-ish:/run/no",
    }
    assert file_secrets(document) == {Path("/run/one"), Path("/run/three")}
    assert file_secrets("plain") == set()


def test_rebase_keeps_the_host_part() -> None:
    addr = rebase(ipaddress.IPv4Address("10.77.0.12"), net("10.77.0.0/24"), net("10.77.9.0/24"))
    assert str(addr) == "10.77.9.12"
    with pytest.raises(ValueError, match="prefix lengths differ"):
        rebase(addr, net("10.77.0.0/24"), net("10.78.0.0/16"))


def test_on_network_moves_every_host(spec: LabSpec) -> None:
    moved = spec.on_network("hxpbr7", ipaddress.IPv4Interface("10.77.7.1/24"))
    assert moved.bridge == "hxpbr7"
    assert moved.apt_proxy_url == "http://10.77.7.1:3142"
    assert [str(h.address) for h in moved.hosts] == ["10.77.7.10", "10.77.7.11"]
    assert [h.name for h in moved.hosts] == [h.name for h in spec.hosts]


def test_free_network_skips_what_is_taken() -> None:
    assert free_network([], set()) == ("hxpbr1", ipaddress.IPv4Interface("10.77.1.1/24"))
    bridge, gateway = free_network([net("10.77.1.0/24"), net("10.77.0.0/24")], {"hxpbr2"})
    assert (bridge, str(gateway)) == ("hxpbr3", "10.77.3.1/24")
    # A wider network on the machine takes every /24 inside it.
    bridge, _ = free_network([net("10.77.0.0/20")], set())
    assert bridge == "hxpbr16"
    with pytest.raises(LabError, match="no free /24"):
        free_network([net("10.77.0.0/16")], set())


def test_host_lookup_names_the_known_hosts(spec: LabSpec) -> None:
    assert spec.host("db-1").name == "db-1"
    with pytest.raises(LabError, match="no host 'nope'; its hosts: llm-1, db-1"):
        spec.host("nope")
