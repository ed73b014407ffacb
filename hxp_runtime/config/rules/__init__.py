"""The rules of hxp.yml that span more than one field, one module per family.

Each rule sees a config whose fields are each valid, and a :class:`Dropped` saying what was left
out of it because it was not; it yields every problem it finds and never stops early.
"""

from __future__ import annotations

from collections.abc import Iterator

from hxp_runtime.config.problems import Dropped, Problem
from hxp_runtime.config.rules.duplicates import duplicate_hosts, duplicate_names
from hxp_runtime.config.rules.failover import failover_problems
from hxp_runtime.config.rules.firewall import firewall_problems
from hxp_runtime.config.rules.hosts import host_problems
from hxp_runtime.config.rules.models import gpu_problems
from hxp_runtime.config.rules.ports import blue_green_problems, port_problems
from hxp_runtime.config.rules.router import router_problems
from hxp_runtime.config.rules.secrets import secret_problems
from hxp_runtime.config.rules.services import service_host_problems
from hxp_runtime.config.rules.status import expected_problems
from hxp_runtime.config.rules.tls import tls_problems
from hxp_runtime.config.schema import HxpConfig

__all__ = ["cross_field_problems", "secret_problems", "tls_problems"]

_NOTHING_DROPPED = Dropped()
# In the order their problems are reported.
_RULES = (
    duplicate_hosts,
    host_problems,
    duplicate_names,
    service_host_problems,
    failover_problems,
    port_problems,
    blue_green_problems,
    router_problems,
    gpu_problems,
    firewall_problems,
    expected_problems,
)


def cross_field_problems(cfg: HxpConfig, dropped: Dropped = _NOTHING_DROPPED) -> Iterator[Problem]:
    """Every rule that spans more than one field; yields all problems, never stops early."""
    for rule in _RULES:
        yield from rule(cfg, dropped)
