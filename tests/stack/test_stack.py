"""The deployed stack, across hosts: every service where hxp.yml puts it, reachable by whom it
should be and refused to everyone else."""

from __future__ import annotations

import subprocess

import pytest
import testinfra

from hxp_runtime.config import HostGroup, HxpConfig
from tests.stack.conftest import host_in, secret

Hosts = dict[str, testinfra.host.Host]


def test_every_host_is_up_with_systemd(cfg: HxpConfig, hosts: Hosts) -> None:
    assert set(hosts) == {h.name for h in cfg.hosts}
    for name, host in hosts.items():
        state = host.run("systemctl is-system-running").stdout.strip()
        assert state in {"running", "degraded"}, (name, state)
        failed = host.check_output("systemctl list-units --failed --plain --no-legend")
        assert failed == "", (name, failed)


def test_postgresql_serves_the_llm_host_only(cfg: HxpConfig, hosts: Hosts) -> None:
    assert cfg.database is not None
    db = host_in(cfg, hosts, HostGroup.DATABASE)
    llm = host_in(cfg, hosts, HostGroup.LLM)
    address = str(cfg.host(db.backend.get_hostname()).address)
    port = cfg.database.port
    assert db.socket(f"tcp://{address}:{port}").is_listening
    # Reachable from the LLM host, where the router runs ...
    probe = f"timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/{port}'"
    assert llm.run(probe).rc == 0
    # ... and refused by pg_hba from anywhere else (this controller is on the lab bridge).
    refused = subprocess.run(
        [
            "psql",
            "-h",
            address,
            "-p",
            str(port),
            "-U",
            cfg.database.router_user,
            "-d",
            cfg.database.name,
            "-c",
            "select 1",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={"PGPASSWORD": secret(cfg.database.router_password.value), "PATH": "/usr/bin:/bin"},
    )
    assert refused.returncode != 0
    assert "no pg_hba.conf entry" in refused.stderr


def test_redis_requires_its_password(cfg: HxpConfig, hosts: Hosts) -> None:
    assert cfg.cache is not None
    cache = host_in(cfg, hosts, HostGroup.CACHE)
    address = str(cfg.host(cache.backend.get_hostname()).address)
    base = ["redis-cli", "-h", address, "-p", str(cfg.cache.port), "--no-auth-warning"]
    anonymous = subprocess.run([*base, "ping"], capture_output=True, text=True, check=False)
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr
    password = secret(cfg.cache.password.value)
    authed = subprocess.run(
        [*base, "-a", password, "ping"], capture_output=True, text=True, check=True
    )
    assert authed.stdout.strip() == "PONG"


@pytest.mark.parametrize("group", [HostGroup.DATABASE, HostGroup.CACHE, HostGroup.VECTOR])
def test_no_secret_in_any_journal(cfg: HxpConfig, hosts: Hosts, group: HostGroup) -> None:
    host = host_in(cfg, hosts, group)
    journal = host.check_output("journalctl --no-pager -o cat")
    for ref in cfg.secret_refs():
        assert secret(ref.value) not in journal, (
            f"{ref} appears in {host.backend.get_hostname()}'s journal"
        )
