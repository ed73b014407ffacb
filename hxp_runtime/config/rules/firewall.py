"""A firewall must know where hxp deploys from, or it would lock the controller out."""

from __future__ import annotations

from collections.abc import Iterator

from hxp_runtime.config.problems import Dropped, Problem
from hxp_runtime.config.schema import HxpConfig


def firewall_problems(cfg: HxpConfig, dropped: Dropped) -> Iterator[Problem]:
    fw = cfg.firewall
    if fw is None or not fw.enabled or fw.controller or cfg.lab is not None:
        return
    yield Problem(
        ("firewall", "controller"),
        "an enabled firewall needs the controller's address, or SSH from it would be dropped; "
        "give firewall.controller (e.g. [192.0.2.5/32])",
    )
