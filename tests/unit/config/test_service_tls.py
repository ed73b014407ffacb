"""database.tls and cache.tls: all three fields, secret references only, and (render, deploy) a
pair that matches, covers the address the router connects to (PostgreSQL's host; Redis on the
router's host: loopback) and was issued by the CA the router trusts. Rendered: the servers'
role variables, the router's CAs, Redis's loopback bind."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hxp_runtime.certs import Issued, create_ca, issue
from hxp_runtime.config import ConfigError, Problem, load_config, plan_deployment
from hxp_runtime.render import postgresql_vars, redis_vars, router_vars
from tests.unit.conftest import BASE, Problems, only

DB = ipaddress.IPv4Address("10.0.0.11")  # db-1 of BASE
LLM = ipaddress.IPv4Address("10.0.0.10")  # llm-1 of BASE: the router's host and the cache's
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
DB_LINE = '  router_password: "env:HXP_DB_PASSWORD"\n'
CACHE_LINE = '  password: "env:HXP_REDIS_PASSWORD"\n'
TLS = (
    "  tls: {{certificate: 'file:{dir}/{stem}.crt', key: 'file:{dir}/{stem}.key', "
    "ca: 'file:{dir}/ca.crt'}}\n"
)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return create_ca("unit CA")


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HXP_DB_PASSWORD", "db-password-0123456789")
    monkeypatch.setenv("HXP_REDIS_PASSWORD", "redis-password-0123456789")
    yield


def with_tls(directory: Path) -> str:
    return BASE.replace(DB_LINE, DB_LINE + TLS.format(dir=directory, stem="postgresql")).replace(
        CACHE_LINE, CACHE_LINE + TLS.format(dir=directory, stem="redis")
    )


Checked = Callable[..., list[Problem]]


@pytest.fixture
def checked(tmp_path: Path, secrets_env: None, ca: Issued) -> Checked:
    """The problems of BASE with database.tls and cache.tls in files of tmp_path, as render
    checks them; by default pairs that are right, each part replaceable."""

    def check(
        postgresql: Issued | None = None, redis: Issued | None = None, authority: bytes = b""
    ) -> list[Problem]:
        pairs = {
            "postgresql": postgresql or issue(ca, "db-1", [DB]),
            "redis": redis or issue(ca, "llm-1", [LLM, LOOPBACK]),
        }
        for stem, pair in pairs.items():
            (tmp_path / f"{stem}.crt").write_bytes(pair.certificate)
            (tmp_path / f"{stem}.key").write_bytes(pair.key)
        (tmp_path / "ca.crt").write_bytes(authority or ca.certificate)
        config = tmp_path / "hxp.yml"
        config.write_text(with_tls(tmp_path))
        try:
            load_config(config, check_secrets=True)
        except ConfigError as exc:
            for problem in exc.errors:
                assert "PRIVATE KEY" not in problem.message
            return exc.errors
        return []

    return check


def test_pairs_that_cover_what_the_router_connects_to_are_valid(checked: Checked) -> None:
    assert checked() == []


def test_a_database_certificate_for_another_address(checked: Checked, ca: Issued) -> None:
    elsewhere = issue(ca, "db-1", [ipaddress.IPv4Address("10.0.0.99")])
    problem = only(checked(postgresql=elsewhere))
    assert problem.field == "database.tls.certificate"
    assert "does not cover PostgreSQL's address 10.0.0.11 (host db-1)" in problem.message


def test_redis_beside_the_router_needs_loopback_in_its_certificate(
    checked: Checked, ca: Issued
) -> None:
    problem = only(checked(redis=issue(ca, "llm-1", [LLM])))
    assert problem.field == "cache.tls.certificate"
    assert "does not cover Redis's address 127.0.0.1 (host llm-1)" in problem.message
    assert "IP:127.0.0.1" in problem.message  # what to do


def test_a_key_of_another_certificate(checked: Checked, ca: Issued) -> None:
    mixed = Issued(issue(ca, "db-1", [DB]).certificate, issue(ca, "db-1", [DB]).key)
    problem = only(checked(postgresql=mixed))
    assert problem.field == "database.tls.key"
    assert "does not belong to the certificate" in problem.message


def test_a_ca_that_did_not_issue_the_certificates(checked: Checked) -> None:
    problems = checked(authority=create_ca("another CA").certificate)
    assert [p.field for p in problems] == ["database.tls.ca", "cache.tls.ca"]
    assert "did not issue the certificate (this CA is CN=another CA" in problems[0].message
    assert "issuer is CN=unit CA" in problems[0].message


def test_a_ca_that_is_not_pem(checked: Checked) -> None:
    problems = checked(authority=b"not a certificate\n")
    assert [p.field for p in problems] == ["database.tls.ca", "cache.tls.ca"]
    assert "is not a PEM certificate" in problems[0].message


def test_all_three_fields_are_needed(problems_of: Problems) -> None:
    text = BASE.replace(DB_LINE, DB_LINE + "  tls: {certificate: env:C, key: env:K}\n")
    problem = only(problems_of(text))
    assert problem.field == "database.tls.ca"
    assert "Field required" in problem.message or "missing" in problem.message.lower()


def test_a_pasted_key_is_refused_without_being_repeated(problems_of: Problems) -> None:
    pasted = "-----BEGIN PRIVATE KEY-----"
    text = BASE.replace(
        CACHE_LINE, CACHE_LINE + f"  tls: {{certificate: env:C, key: '{pasted}', ca: env:A}}\n"
    )
    problem = only(problems_of(text))
    assert problem.field == "cache.tls.key"
    assert "plaintext secret is not allowed" in problem.message
    assert "BEGIN" not in problem.message


def test_render_gives_the_servers_their_pairs_and_the_router_its_cas(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "hxp.yml", text=with_tls(tmp_path).encode())
    plan = plan_deployment(cfg)
    pg, redis, router = postgresql_vars(cfg, plan), redis_vars(cfg, plan), router_vars(cfg, plan)
    lookup = "lookup('hxp_secret', hxp_secret_refs['{}'], pem=true)"
    assert lookup.format("database.tls.certificate") in str(pg["hxp_postgresql_tls_certificate"])
    assert lookup.format("database.tls.key") in str(pg["hxp_postgresql_tls_key"])
    assert lookup.format("cache.tls.ca") in str(redis["hxp_redis_tls_ca"])
    assert lookup.format("database.tls.ca") in str(router["hxp_router_database_ca"])
    assert lookup.format("cache.tls.ca") in str(router["hxp_router_redis_ca"])
    # Redis beside the router: loopback for Redis and the router, the host's address for the
    # exporter Prometheus scrapes.
    assert redis["hxp_redis_bind_address"] == "127.0.0.1"
    assert redis["hxp_redis_exporter_address"] == str(LLM)
    settings = router["hxp_router_settings"]
    assert settings["redis"]["host"] == "127.0.0.1"
    assert settings["database"]["host"] == str(DB)


def test_render_without_tls_leaves_it_off_and_redis_elsewhere_on_its_address() -> None:
    text = BASE.replace("groups: [llm, cache]", "groups: [llm]").replace(
        "groups: [database]", "groups: [database, cache]"
    )
    cfg = load_config(Path("hxp.yml"), text=text.encode())
    plan = plan_deployment(cfg)
    pg, redis, router = postgresql_vars(cfg, plan), redis_vars(cfg, plan), router_vars(cfg, plan)
    assert pg["hxp_postgresql_tls_certificate"] is None
    assert redis["hxp_redis_tls_certificate"] is None
    assert router["hxp_router_redis_ca"] is None
    assert redis["hxp_redis_bind_address"] == str(DB)
    assert router["hxp_router_settings"]["redis"]["host"] == str(DB)
