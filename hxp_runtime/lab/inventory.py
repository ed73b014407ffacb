"""What Ansible and Molecule get from a lab: the inventory ``up`` writes, and the summary
``hxp lab up --json`` prints (Molecule's instance config is made from it)."""

from __future__ import annotations

from typing import Any

import yaml

from hxp_runtime.lab.hostos import write_file
from hxp_runtime.lab.spec import LabSpec

SSH_OPTIONS = (
    "-o UserKnownHostsFile=/dev/null",  # every host has the base image's host keys
    "-o StrictHostKeyChecking=no",
    "-o LogLevel=ERROR",
    "-o IdentitiesOnly=yes",
)


def ansible_inventory(spec: LabSpec) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}
    for host in spec.hosts:
        for group in host.groups:
            groups.setdefault(group, {"hosts": {}})["hosts"][host.name] = {}
    return {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(spec.key_file),
                "ansible_ssh_common_args": " ".join(SSH_OPTIONS),
                "ansible_ssh_pipelining": True,
                "ansible_python_interpreter": "/usr/bin/python3",
                "hxp_lab_gateway": str(spec.gateway.ip),
                "hxp_common_apt_proxy": spec.apt_proxy_url,
                # Lab hosts reach nothing beyond the bridge: the only time source they could
                # ask is the controller's address on it, never the Debian pool.
                "hxp_common_ntp_sources": [f"server {spec.gateway.ip} iburst"],
            },
            "hosts": {h.name: {"ansible_host": str(h.address)} for h in spec.hosts},
            "children": dict(sorted(groups.items())),
        }
    }


def inventory_text(spec: LabSpec) -> str:
    return f"# Written by `hxp lab up` for lab {spec.name}.\n" + yaml.safe_dump(
        ansible_inventory(spec), sort_keys=False
    )


def write_inventory(spec: LabSpec) -> None:
    write_file(spec.inventory_file, inventory_text(spec))


def ssh_argv(spec: LabSpec, host: str) -> list[str]:
    """``ssh`` as root to ``host`` of the lab with the lab's key (a command may follow)."""
    options = [word for option in SSH_OPTIONS for word in option.split()]
    return ["ssh", "-i", str(spec.key_file), *options, f"root@{spec.host(host).address}"]


def lab_summary(spec: LabSpec) -> dict[str, object]:
    """The result of `hxp lab up --json`: where the lab is and how to reach each host."""
    return {
        "name": spec.name,
        "bridge": spec.bridge,
        "gateway": str(spec.gateway),
        "apt_proxy": spec.apt_proxy_url,
        "inventory": str(spec.inventory_file),
        "identity_file": str(spec.key_file),
        "hosts": [
            {"name": h.name, "address": str(h.address), "user": "root", "port": 22}
            for h in spec.hosts
        ],
    }
