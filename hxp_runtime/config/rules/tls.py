"""router.tls: the certificate parses, the key is its key, and it covers the router's address.

Only env: and file: references can be read on the controller (render and deploy, which resolve
secrets anyway); a vault: certificate is checked on the host by ``hxp-router --check``, which
loads the pair before the router is given it.
"""

from __future__ import annotations

from collections.abc import Iterator

from hxp_runtime.config.endpoints import resolve_host
from hxp_runtime.config.problems import Problem
from hxp_runtime.config.schema import HostGroup, HxpConfig

_FIELD = ("router", "tls")


def tls_problems(cfg: HxpConfig) -> Iterator[Problem]:
    tls = cfg.router.tls
    host_name = resolve_host(cfg, cfg.router.host, HostGroup.LLM)
    if tls is None or host_name is None:
        return
    try:
        certificate, key = tls.certificate.controller_value(), tls.key.controller_value()
    except (OSError, KeyError):
        return  # secret_problems reports the reference itself
    if certificate is None or key is None:
        return
    # Here, not at the top: the router on a host imports hxp_runtime.config, and the hosts have
    # no cryptography; only render and deploy, on the controller, run this rule.
    from hxp_runtime.certs import check_pair  # noqa: PLC0415

    problems = check_pair(
        certificate.encode(), key.encode(), cfg.host(host_name).address, host_name
    )
    for field, messages in (("certificate", problems.certificate), ("key", problems.key)):
        for message in messages:
            yield Problem((*_FIELD, field), f"secret {getattr(tls, field)}: {message}")
