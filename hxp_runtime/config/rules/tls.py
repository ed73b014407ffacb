"""router.tls, database.tls, cache.tls: each certificate parses, its key is its key, it covers
the address its clients connect to, and (database, cache) the CA the router trusts issued it.

Only env: and file: references can be read on the controller (render and deploy, which resolve
secrets anyway); a vault: certificate is checked on the host: ``hxp-router --check`` loads the
router's pair, PostgreSQL and Redis refuse to start with a pair that does not load.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from hxp_runtime.config.endpoints import cache_address, database_address, router_hosts
from hxp_runtime.config.problems import Problem
from hxp_runtime.config.schema import HxpConfig, ServiceTls, TlsPair
from hxp_runtime.yamlsource import PathKey


def tls_problems(cfg: HxpConfig) -> Iterator[Problem]:
    known = {h.name: h.address for h in cfg.hosts}
    if cfg.router.tls is not None:
        # Each router host's address (Prometheus scrapes each) and the virtual one (clients).
        endpoints = [(name, known[name]) for name in router_hosts(cfg) if name in known]
        if endpoints and cfg.router.virtual_address is not None:
            endpoints.append((endpoints[0][0], cfg.router.virtual_address.address))
        problems = (
            problem
            for endpoint in endpoints
            for problem in _pair_problems(("router", "tls"), cfg.router.tls, endpoint, "the router")
        )
        yield from dict.fromkeys(problems)  # the key's problems, once
    if cfg.database is not None and cfg.database.tls is not None:
        yield from _pair_problems(
            ("database", "tls"), cfg.database.tls, database_address(cfg), "PostgreSQL"
        )
    if cfg.cache is not None and cfg.cache.tls is not None:
        yield from _pair_problems(("cache", "tls"), cfg.cache.tls, cache_address(cfg), "Redis")


def _pair_problems(
    field: PathKey,
    tls: TlsPair,
    endpoint: tuple[str, ipaddress.IPv4Address] | None,
    server: str,
) -> Iterator[Problem]:
    """The problems of one pair (and its CA) for ``server`` reached at ``endpoint``."""
    if endpoint is None:
        return  # the host is the rules' to report
    ca = tls.ca if isinstance(tls, ServiceTls) else None
    try:
        certificate, key = tls.certificate.controller_value(), tls.key.controller_value()
        ca_pem = ca.controller_value() if ca is not None else None
    except (OSError, KeyError):
        return  # secret_problems reports the reference itself
    if certificate is None or key is None:
        return
    # Here, not at the top: the router on a host imports hxp_runtime.config, and the hosts have
    # no cryptography; only render and deploy, on the controller, run this rule.
    from hxp_runtime.certs import check_issuer, check_pair  # noqa: PLC0415

    host_name, address = endpoint
    problems = check_pair(certificate.encode(), key.encode(), address, host_name, server)
    issuer = check_issuer(certificate.encode(), ca_pem.encode()) if ca_pem is not None else []
    for name, messages in (
        ("certificate", problems.certificate),
        ("key", problems.key),
        ("ca", issuer),
    ):
        for message in messages:
            yield Problem((*field, name), f"secret {getattr(tls, name)}: {message}")
