"""Ansible filter plugin: hxp's systemd hardening baseline, as the lines of a [Service] section.

Every unit hxp writes, and every drop-in it puts on a Debian unit, takes its sandbox from here,
so the baseline is stated once. A unit states only how it differs: a directive it needs changed
(``RestrictAddressFamilies`` with ``AF_NETLINK``), one it cannot have (``None``: vLLM's JIT needs
writable executable memory), or one the baseline lacks (``ReadWritePaths``). The Testinfra
verifiers (roles/conftest.py) import ``CORE`` from this file and check it on every unit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

DOCUMENTATION = """
name: hxp_systemd_hardening
short_description: hxp's systemd hardening baseline with one unit's changes, as directive lines
description:
  - Returns the baseline's directives, one C(Name=value) line each, in a fixed order, with the
    changes given applied in place; directives the baseline lacks follow it in the order given.
  - A value of C(None) drops a directive of the sandbox part; a list gives one line per element
    (systemd's repeated assignments; an empty string resets a list-valued directive); C(true) and
    C(false) are written as systemd writes them.
  - The core part (no new privileges, no capabilities, a read-only system, no home, a private
    /tmp) holds for every unit; changing or dropping one of its directives fails.
positional: sandbox
options:
  _input:
    description: The unit's changes, directive name -> value; empty or null for none.
    type: dict
  sandbox:
    description: >-
      false leaves out the sandbox part: for a drop-in on a Debian unit that brings its own
      sandbox, only the core is stated.
    type: bool
    default: true
  capabilities:
    description: >-
      The capabilities a root daemon that changes the host's network keeps (keepalived adds
      and removes the virtual address: CAP_NET_ADMIN, CAP_NET_RAW), as CapabilityBoundingSet;
      only names from PRIVILEGED_CAPABILITIES. Every other core directive still holds.
    type: list
    default: []
"""

EXAMPLES = """
# In a unit template's [Service] section: the baseline, writable data, no MemoryDenyWriteExecute.
sandbox: "{{ {'ReadWritePaths': data, 'MemoryDenyWriteExecute': none} | hxp_systemd_hardening }}"
# A drop-in on a Debian unit with its own sandbox: the core only.
core: "{{ {'ReadWritePaths': ['', '-/var/lib/redis']} | hxp_systemd_hardening(false) }}"
"""

RETURN = """
_value:
  description: The directive lines, joined by newlines, without a trailing newline.
  type: str
"""

Value = str | list[str]

# The only capabilities a unit may keep (``capabilities``): a network daemon's, and dropping to
# the unprivileged user of its scripts. None of them reads or writes another user's files.
PRIVILEGED_CAPABILITIES = frozenset(
    {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_KILL"}
)

# Every unit and drop-in: no unit may change these.
CORE: dict[str, Value] = {
    "NoNewPrivileges": "true",
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "PrivateTmp": "true",
    "CapabilityBoundingSet": "",
}

# The rest of the baseline: a unit that needs one of these changed or gone says so.
SANDBOX: dict[str, Value] = {
    "AmbientCapabilities": "",
    "PrivateDevices": "true",
    # Mounts a service makes stay in its own namespace; the host's still reach it.
    "PrivateMounts": "true",
    "ProtectClock": "true",
    "ProtectControlGroups": "true",
    "ProtectHostname": "true",
    "ProtectKernelLogs": "true",
    "ProtectKernelModules": "true",
    "ProtectKernelTunables": "true",
    "ProtectProc": "invisible",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "true",
    "RestrictRealtime": "true",
    "RestrictSUIDSGID": "true",
    "LockPersonality": "true",
    "MemoryDenyWriteExecute": "true",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
}

BASELINE: dict[str, Value] = {**CORE, **SANDBOX}

# The highest "Overall exposure level" `systemd-analyze security` may rate a unit hxp writes or
# drops in to (0 = fully sandboxed, 10 = not at all); tests/unit/test_systemd_exposure.py and the
# roles' Molecule verifiers hold every unit to it (docs/security.md).
EXPOSURE_LIMIT = 2.0


def shown(value: Value) -> str:
    """A directive's value as `systemctl show` prints it (booleans as yes/no)."""
    text = " ".join(value) if isinstance(value, list) else value
    return {"true": "yes", "false": "no"}.get(text, text)


def _values(name: str, value: Any) -> list[str]:
    """The values of one directive, one per line; rejects what systemd would misread."""
    items = value if isinstance(value, list) else [value]
    lines = []
    for item in items:
        if isinstance(item, bool):
            lines.append("true" if item else "false")
        elif isinstance(item, str | int) and "\n" not in str(item):
            lines.append(str(item))
        else:
            raise AnsibleFilterError(
                f"hxp_systemd_hardening: {name}: {item!r} is not a one-line string, number or "
                "boolean"
            )
    return lines


def hxp_systemd_hardening(
    changes: Mapping[str, Any] | None = None,
    sandbox: bool = True,
    capabilities: list[str] | None = None,
) -> str:
    """The baseline's lines with ``changes`` applied (see DOCUMENTATION)."""
    changes = dict(changes or {})
    kept = list(capabilities or [])
    unknown = sorted(set(kept) - PRIVILEGED_CAPABILITIES)
    if unknown:
        raise AnsibleFilterError(
            f"hxp_systemd_hardening: {', '.join(unknown)} may not be kept; a unit keeps at most "
            f"{', '.join(sorted(PRIVILEGED_CAPABILITIES))}"
        )
    for name, value in CORE.items():
        if name in changes and changes[name] != value:
            raise AnsibleFilterError(
                f"hxp_systemd_hardening: {name}={value} holds for every hxp unit; a unit "
                "cannot change or drop it"
            )
    directives: dict[str, Any] = {**(BASELINE if sandbox else CORE)}
    if kept:
        directives["CapabilityBoundingSet"] = " ".join(kept)
    for name, value in changes.items():
        if value is None and name not in directives:
            raise AnsibleFilterError(
                f"hxp_systemd_hardening: {name} is not in the baseline here; nothing to drop"
            )
        directives[name] = value
    return "\n".join(
        f"{name}={line}"
        for name, value in directives.items()
        if value is not None
        for line in _values(name, value)
    )


class FilterModule:
    def filters(self) -> dict[str, Callable[..., str]]:
        return {"hxp_systemd_hardening": hxp_systemd_hardening}
