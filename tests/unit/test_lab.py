"""The lab's pure parts: spec from hxp.yml, address rules, network choice, the files written
into the guests, the inventory, mirror detection, mountinfo parsing, cache merging."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
import yaml

from hxp_runtime import lab
from hxp_runtime.config import ConfigError

REPO = Path(__file__).resolve().parents[2]

LAB_CONFIG = """\
version: 1
name: unit-lab
lab:
  bridge: hxpunit0
  gateway: 10.99.5.1/24
  state_dir: state
hosts:
  - name: llm-1
    address: 10.99.5.10
    groups: [llm, cache]
    accelerator: cpu
  - name: db-1
    address: 10.99.5.11
    groups: [database]
database:
  router_password: "file:/tmp/hxp-unit/secrets/db"
"""


def spec_of(tmp_path: Path, text: str = LAB_CONFIG) -> lab.LabSpec:
    file = tmp_path / "hxp.yml"
    file.write_text(text)
    return lab.load_lab(file)


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def test_spec_from_config(tmp_path: Path) -> None:
    spec = spec_of(tmp_path)
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


def test_lab_inventory_is_a_valid_config() -> None:
    file = REPO / "inventory" / "lab" / "hxp.yml"
    spec = lab.load_lab(file)
    assert spec.bridge == "hxpbr0"
    assert spec.state_dir == REPO / ".lab" / "hxp-lab"
    groups = {g for h in spec.hosts for g in h.groups}
    assert {"llm", "database", "vector", "metrics"} <= groups
    assert all(Path(p).is_absolute() for p in spec.secret_files)


def test_without_a_lab_section_the_defaults_apply(tmp_path: Path) -> None:
    lab_section = "lab:\n  bridge: hxpunit0\n  gateway: 10.99.5.1/24\n  state_dir: state\n"
    assert lab_section in LAB_CONFIG
    spec = spec_of(tmp_path, LAB_CONFIG.replace(lab_section, "").replace("10.99.5.", "10.77.0."))
    assert (spec.bridge, str(spec.gateway)) == ("hxpbr0", "10.77.0.1/24")
    assert spec.state_dir == tmp_path / ".lab" / "unit-lab"


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
    tmp_path: Path, address: str, where: str, message: str
) -> None:
    text = LAB_CONFIG.replace("address: 10.99.5.10", f"address: {address}")
    with pytest.raises(ConfigError) as caught:
        spec_of(tmp_path, text)
    rendered = caught.value.render()
    assert f"hxp.yml{where} " in rendered
    assert message in rendered


def test_ssh_user_is_rejected(tmp_path: Path) -> None:
    text = LAB_CONFIG.replace(
        "    accelerator: cpu\n", "    accelerator: cpu\n    ssh_user: debian\n"
    )
    with pytest.raises(ConfigError, match="lab hosts take SSH as root"):
        spec_of(tmp_path, text)


def test_subnet_too_small(tmp_path: Path) -> None:
    text = LAB_CONFIG.replace("10.99.5.1/24", "10.99.5.1/30").replace("10.99.5.11", "10.99.5.2")
    with pytest.raises(ConfigError, match="too small"):
        spec_of(tmp_path, text)


def test_rebase_keeps_the_host_part() -> None:
    addr = lab.rebase(ipaddress.IPv4Address("10.77.0.12"), net("10.77.0.0/24"), net("10.77.9.0/24"))
    assert str(addr) == "10.77.9.12"
    with pytest.raises(ValueError, match="prefix lengths differ"):
        lab.rebase(addr, net("10.77.0.0/24"), net("10.78.0.0/16"))


def test_on_network_moves_every_host(tmp_path: Path) -> None:
    spec = spec_of(tmp_path).on_network("hxpbr7", ipaddress.IPv4Interface("10.77.7.1/24"))
    assert spec.bridge == "hxpbr7"
    assert [str(h.address) for h in spec.hosts] == ["10.77.7.10", "10.77.7.11"]


def test_free_network_skips_what_is_taken() -> None:
    assert lab.free_network([], set()) == ("hxpbr1", ipaddress.IPv4Interface("10.77.1.1/24"))
    bridge, gateway = lab.free_network([net("10.77.1.0/24"), net("10.77.0.0/24")], {"hxpbr2"})
    assert (bridge, str(gateway)) == ("hxpbr3", "10.77.3.1/24")
    with pytest.raises(lab.LabError, match="no free /24"):
        lab.free_network([net("10.77.0.0/16")], set())


def test_guest_files(tmp_path: Path) -> None:
    spec = spec_of(tmp_path)
    hosts = lab.etc_hosts(spec)
    assert "10.99.5.10\tllm-1\n" in hosts and "10.99.5.11\tdb-1\n" in hosts
    assert "127.0.0.1\tlocalhost" in hosts
    unit = lab.network_unit(spec, spec.hosts[1])
    assert "Name=host0" in unit
    assert "Address=10.99.5.11/24" in unit and "Gateway=10.99.5.1" in unit
    assert "LinkLocalAddressing=no" in unit
    assert lab.apt_proxy_conf(spec).endswith('Acquire::http::Proxy "http://10.99.5.1:3142";\n')


def test_apt_cacher_ng_binds_the_bridge_only(tmp_path: Path) -> None:
    conf = lab.acng_conf(spec_of(tmp_path), Path("/c"), Path("/r"), Path("/run/x.acng"))
    assert "BindAddress: 10.99.5.1\n" in conf
    assert "Port: 3142\n" in conf
    assert "CacheDir: /c\n" in conf and "SocketPath: /run/x.acng\n" in conf
    assert "Remap" not in conf


def test_nspawn_command(tmp_path: Path) -> None:
    spec = spec_of(tmp_path)
    argv = lab.nspawn_command(spec, spec.hosts[0], Path("/root-dir"))
    assert argv[0] == "systemd-nspawn"
    for flag in (
        "--boot",
        "--directory=/root-dir",
        "--machine=unit-lab-llm-1",
        "--register=no",
        "--keep-unit",
        "--network-bridge=hxpunit0",
        "--console=passive",
    ):
        assert flag in argv


def test_ansible_inventory(tmp_path: Path) -> None:
    spec = spec_of(tmp_path)
    inventory = yaml.safe_load(yaml.safe_dump(lab.ansible_inventory(spec)))["all"]
    assert inventory["hosts"] == {
        "llm-1": {"ansible_host": "10.99.5.10"},
        "db-1": {"ansible_host": "10.99.5.11"},
    }
    assert inventory["children"]["cache"]["hosts"] == {"llm-1": {}}
    assert inventory["children"]["database"]["hosts"] == {"db-1": {}}
    options = inventory["vars"]
    assert options["ansible_user"] == "root"
    assert options["ansible_ssh_private_key_file"] == str(spec.key_file)
    assert "UserKnownHostsFile=/dev/null" in options["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=no" in options["ansible_ssh_common_args"]
    assert options["ansible_ssh_pipelining"] is True
    assert options["hxp_common_apt_proxy"] == "http://10.99.5.1:3142"


def test_controller_mirror() -> None:
    deb822 = (
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert lab.controller_mirror({"debian.sources": deb822}) == "http://mirror.example/debian"
    one_line = "# a comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n"
    assert lab.controller_mirror({"sources.list": one_line}) == "http://other.example/debian"
    assert lab.controller_mirror({"x.list": "deb https://nodesource/ nodistro main"}) == (
        lab.DEFAULT_MIRROR
    )


def test_base_image_key_covers_its_inputs() -> None:
    key = lab.base_image_key("http://a/debian", {"ca.crt": b"x"})
    assert key == lab.base_image_key("http://a/debian", {"ca.crt": b"x"})
    assert key != lab.base_image_key("http://b/debian", {"ca.crt": b"x"})
    assert key != lab.base_image_key("http://a/debian", {"ca.crt": b"y"})
    assert len(key) == 12


def test_mounts_under() -> None:
    mountinfo = (
        "22 1 8:1 / / rw - ext4 /dev/vda rw\n"
        "90 22 0:50 / /srv/lab/hosts/a/root rw - overlay overlay rw,lowerdir=/x\n"
        "91 22 0:51 / /srv/lab/apt\\040cache rw - overlay overlay rw\n"
        "92 90 0:52 / /srv/lab/hosts/a/root/proc rw - proc proc rw\n"
        "93 22 0:53 / /srv/laboratory rw - tmpfs tmpfs rw\n"
    )
    assert lab.mounts_under(mountinfo, Path("/srv/lab")) == [
        Path("/srv/lab/hosts/a/root/proc"),
        Path("/srv/lab/hosts/a/root"),
        Path("/srv/lab/apt cache"),
    ]
    assert lab.mounts_under(mountinfo, Path("/srv/none")) == []


def test_state_round_trip(tmp_path: Path) -> None:
    spec = spec_of(tmp_path)
    state = lab.LabState.of(spec)
    state.created_bridge = True
    lab.save_state(tmp_path, state)
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600
    loaded = lab.load_state(tmp_path)
    assert loaded == state
    assert loaded.spec(spec.state_dir).hosts == spec.hosts
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(lab.LabError, match="unreadable lab state"):
        lab.load_state(tmp_path)
    assert lab.load_state(tmp_path / "absent") is None


def test_merge_tree_copies_files_only(tmp_path: Path) -> None:
    upper, shared = tmp_path / "upper", tmp_path / "shared"
    (upper / "deb.debian.org/debian/pool").mkdir(parents=True)
    (upper / "deb.debian.org/debian/pool/a.deb").write_bytes(b"new")
    (shared / "deb.debian.org/debian").mkdir(parents=True)
    (shared / "deb.debian.org/debian/old.deb").write_bytes(b"old")
    (upper / "link").symlink_to("/etc/passwd")
    whiteout = upper / "deb.debian.org/debian/old.deb"
    if os.geteuid() == 0:  # overlayfs records a deletion as a 0/0 character device
        os.mknod(whiteout, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    assert lab.merge_tree(upper, shared) == 1
    assert (shared / "deb.debian.org/debian/pool/a.deb").read_bytes() == b"new"
    assert (shared / "deb.debian.org/debian/old.deb").read_bytes() == b"old"
    assert not (shared / "link").exists()


def test_cgroup_hierarchies(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "systemd").mkdir()
    (tmp_path / "memory").mkdir()
    assert lab.cgroup_hierarchies(tmp_path) == [tmp_path / "unified", tmp_path / "systemd"]
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    assert lab.cgroup_hierarchies(tmp_path) == [tmp_path]


def test_host_lookup_names_the_known_hosts(tmp_path: Path) -> None:
    spec = spec_of(tmp_path)
    assert spec.host("db-1").name == "db-1"
    with pytest.raises(lab.LabError, match="no host 'nope'; its hosts: llm-1, db-1"):
        spec.host("nope")


def test_removing_state_tolerates_files_another_cleanup_removed_first() -> None:
    gone = FileNotFoundError(2, "No such file or directory", "x")
    lab._ignore_vanished(os.unlink, "x", (FileNotFoundError, gone, None))
    denied = PermissionError(13, "Permission denied", "x")
    with pytest.raises(PermissionError):
        lab._ignore_vanished(os.unlink, "x", (PermissionError, denied, None))
