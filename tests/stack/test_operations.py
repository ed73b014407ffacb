"""Day-2 operations on the running lab, under load from the load tool (tests/stack/load.py)."""

from __future__ import annotations

import time

import testinfra

from hxp_runtime.config import HostGroup, HxpConfig
from tests.stack.conftest import host_in
from tests.stack.load import start_load

Hosts = dict[str, testinfra.host.Host]
LOAD_S = 25.0


def restart_router_under_load(
    cfg: HxpConfig, llm: testinfra.host.Host, *, retries: bool
) -> dict[str, object]:
    """The load tool's report for a run with `systemctl restart hxp-router` in its middle."""
    models = [model.name for model in cfg.models[:2]]
    run = start_load(
        cfg,
        models=models,
        concurrency=8,
        duration_s=LOAD_S,
        client="openai",
        retries=retries,
    )
    time.sleep(LOAD_S / 2)
    before = llm.check_output("systemctl show -p MainPID --value hxp-router")
    started = time.monotonic()
    llm.check_output("systemctl restart hxp-router")
    took_s = time.monotonic() - started
    assert llm.check_output("systemctl show -p MainPID --value hxp-router") != before
    assert llm.service("hxp-router.socket").is_running
    report = run.wait(timeout=LOAD_S + 120)
    failed = report["failed"]
    assert isinstance(failed, dict)
    print(
        f"\nrouter restart ({took_s:.1f} s) under load, openai client, "
        f"retries {'on (defaults)' if retries else 'off'}: {report['ok']} ok, "
        f"{sum(failed.values())} failed {failed}"
    )
    return report


def test_router_restart_under_load(cfg: HxpConfig, hosts: Hosts) -> None:
    llm = host_in(cfg, hosts, HostGroup.LLM)
    defaults = restart_router_under_load(cfg, llm, retries=True)
    assert defaults["failed"] == {}, defaults.get("failures")
    # Without retries a request sent into a keep-alive connection as the old worker closes it
    # can fail; the socket itself refuses nothing.
    bare = restart_router_under_load(cfg, llm, retries=False)
    failed = sum(bare["failed"].values())  # type: ignore[attr-defined]
    sent = bare["sent"]
    assert isinstance(sent, int) and sent > 0
    assert failed <= max(1, sent // 100), bare.get("failures")
