"""Every env: and file: secret reference resolves on this machine (render and deploy need the
values; validate does not ask for them)."""

from __future__ import annotations

from collections.abc import Iterator

from hxp_runtime.config.problems import Problem
from hxp_runtime.config.schema import HxpConfig, walk_secret_refs


def secret_problems(cfg: HxpConfig) -> Iterator[Problem]:
    for path, ref in walk_secret_refs(cfg):
        reason = ref.unresolvable()
        if reason:
            yield Problem(path, f"secret reference {ref}: {reason}")
