"""What Ansible and Molecule get: the inventory, the `up --json` summary, the ssh command."""

from __future__ import annotations

import pytest
import yaml

from hxp_runtime.lab.errors import LabError
from hxp_runtime.lab.inventory import (
    ansible_inventory,
    inventory_text,
    lab_summary,
    ssh_argv,
    write_inventory,
)
from hxp_runtime.lab.spec import LabSpec


def test_ansible_inventory(spec: LabSpec) -> None:
    inventory = yaml.safe_load(yaml.safe_dump(ansible_inventory(spec)))["all"]
    assert inventory["hosts"] == {
        "llm-1": {"ansible_host": "10.99.5.10"},
        "db-1": {"ansible_host": "10.99.5.11"},
    }
    assert inventory["children"]["cache"]["hosts"] == {"llm-1": {}}
    assert inventory["children"]["database"]["hosts"] == {"db-1": {}}
    assert list(inventory["children"]) == ["cache", "database", "llm"]
    options = inventory["vars"]
    assert options["ansible_user"] == "root"
    assert options["ansible_ssh_private_key_file"] == str(spec.key_file)
    assert "UserKnownHostsFile=/dev/null" in options["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=no" in options["ansible_ssh_common_args"]
    assert options["ansible_ssh_pipelining"] is True
    assert options["hxp_common_apt_proxy"] == "http://10.99.5.1:3142"
    assert options["hxp_lab_gateway"] == "10.99.5.1"
    assert options["hxp_common_ntp_sources"] == ["server 10.99.5.1 iburst"]


def test_written_inventory(spec: LabSpec) -> None:
    text = inventory_text(spec)
    assert text.startswith("# Written by `hxp lab up` for lab unit-lab.\n")
    assert yaml.safe_load(text) == ansible_inventory(spec)
    write_inventory(spec)
    assert spec.inventory_file.read_text() == text


def test_ssh_argv(spec: LabSpec) -> None:
    argv = ssh_argv(spec, "db-1")
    assert argv[:3] == ["ssh", "-i", str(spec.key_file)]
    assert argv[-1] == "root@10.99.5.11"
    assert argv[argv.index("IdentitiesOnly=yes") - 1] == "-o"
    with pytest.raises(LabError, match="no host 'web'"):
        ssh_argv(spec, "web")


def test_summary_is_what_molecule_connects_with(spec: LabSpec) -> None:
    summary = lab_summary(spec)
    assert summary["identity_file"] == str(spec.key_file)
    assert summary["inventory"] == str(spec.inventory_file)
    assert (summary["name"], summary["bridge"], summary["gateway"]) == (
        "unit-lab",
        "hxpunit0",
        "10.99.5.1/24",
    )
    assert summary["apt_proxy"] == "http://10.99.5.1:3142"
    assert summary["hosts"] == [
        {"name": "llm-1", "address": "10.99.5.10", "user": "root", "port": 22},
        {"name": "db-1", "address": "10.99.5.11", "user": "root", "port": 22},
    ]
