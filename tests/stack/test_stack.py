"""The deployed stack, across hosts: every service where hxp.yml puts it, reachable by whom it
should be and refused to everyone else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import testinfra

from hxp_runtime.config import HostGroup, HxpConfig, cache_address
from tests.stack.conftest import host_in, secret
from tests.unit.conftest import load_file_module

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
    # ... and refused by pg_hba from any other address: here the database host's own, which its
    # firewall admits (loopback interface), so that pg_hba alone answers. pg_hba is read before
    # any password is asked for, so none is given.
    refused = db.run(
        "psql -w -h %s -p %s -U %s -d %s -c 'select 1'",
        address,
        str(port),
        cfg.database.router_user,
        cfg.database.name,
    )
    assert refused.rc != 0
    assert "no pg_hba.conf entry" in refused.stderr, refused.stderr


# Run with python3 on the cache host: argv[1] is [address, port, TLS options]. The password is
# read there from the exporter's environment file (JSON-quoted by role redis), never put on a
# command line.
REDIS_PINGS = """
import json, os, subprocess, sys
address, port, tls = json.loads(sys.argv[1])
settings = {}
for line in open("/etc/default/prometheus-redis-exporter", encoding="utf-8"):
    name, _, value = line.strip().partition("=")
    settings[name] = value
ping = ["redis-cli", "-h", address, "-p", str(port), *tls, "--no-auth-warning", "ping"]
anonymous = subprocess.run(ping, capture_output=True, text=True)
password = json.loads(settings["REDIS_PASSWORD"])
authed = subprocess.run(
    ping, capture_output=True, text=True, env={**os.environ, "REDISCLI_AUTH": password}
)
print(json.dumps([anonymous.stdout + anonymous.stderr, authed.stdout.strip()]))
"""


def test_redis_requires_its_password(cfg: HxpConfig, hosts: Hosts) -> None:
    assert cfg.cache is not None
    cache = host_in(cfg, hosts, HostGroup.CACHE)
    # Where the router connects (loopback on its own host); over TLS when cache.tls is on.
    placed = cache_address(cfg)
    assert placed is not None
    tls = ["--tls", "--cacert", "/etc/hxp-redis-tls/ca.crt"] if cfg.cache.tls is not None else []
    answer = cache.check_output(
        "python3 -c %s %s", REDIS_PINGS, json.dumps([str(placed[1]), cfg.cache.port, tls])
    )
    anonymous, authed = json.loads(answer)
    assert "NOAUTH" in anonymous
    assert authed == "PONG"


@pytest.mark.parametrize("group", [HostGroup.DATABASE, HostGroup.CACHE, HostGroup.VECTOR])
def test_no_secret_in_any_journal(cfg: HxpConfig, hosts: Hosts, group: HostGroup) -> None:
    host = host_in(cfg, hosts, group)
    journal = host.check_output("journalctl --no-pager -o cat")
    for ref in cfg.secret_refs():
        assert secret(ref.value) not in journal, (
            f"{ref} appears in {host.backend.get_hostname()}'s journal"
        )


# The baseline's core, from the file every unit template renders it with.
HARDENING = load_file_module(
    "hxp_systemd_hardening",
    Path(__file__).resolve().parents[2] / "plugins" / "filter" / "hxp_systemd_hardening.py",
)
# The units hxp wrote (ansible_managed) or put a hardening drop-in on; a template unit
# (postgresql@.service) is listed as each of its loaded instances.
UNITS_HXP_HARDENS = r"""
cd /etc/systemd/system
grep -l 'Ansible managed' -- *.service 2>/dev/null || true
for dropin in *.service.d/hxp-hardening.conf; do
  [ -f "$dropin" ] || continue
  unit=${dropin%.d/hxp-hardening.conf}
  case $unit in
    *@.service) systemctl list-units --all --plain --no-legend "${unit%.service}*.service" \
                  | awk '{print $1}' ;;
    *) echo "$unit" ;;
  esac
done
"""


def test_every_unit_hxp_writes_or_hardens_runs_with_the_core(hosts: Hosts) -> None:
    expected = {name: HARDENING.shown(value) for name, value in HARDENING.CORE.items()}
    for hostname, host in hosts.items():
        units = sorted(set(host.check_output("sh -c %s", UNITS_HXP_HARDENS).split()))
        assert units, f"{hostname}: no unit of hxp found"
        for unit in units:
            shown = host.check_output(
                f"systemctl show {unit} " + " ".join(f"-p {name}" for name in expected)
            )
            properties = dict(line.split("=", 1) for line in shown.splitlines())
            assert properties == expected, f"{hostname}: {unit}"
