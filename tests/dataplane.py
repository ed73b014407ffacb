"""Throwaway PostgreSQL and Redis servers on loopback, from the Debian packages.

Integration tests and the router benchmark use real servers, each in its own temporary
directory on a free port, gone when the context ends::

    with postgres_server() as pg, redis_server() as redis:
        print(pg.dsn, redis.port)

PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` system
user (created by the Debian package) and commands run through ``runuser``. Both servers
require a password over TCP, like production. Given a :class:`ServerTls` (a PEM certificate,
its key, the CA), each serves TLS only, as the postgresql and redis roles configure it:
PostgreSQL with hostssl lines only, Redis with no plain port. When a binary is missing,
``ServiceMissing`` says which package to install (tests turn it into a skip).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0


class ServiceMissing(Exception):
    pass


@dataclass(frozen=True)
class ServerTls:
    """PEM files: the server's certificate and key, and the CA that issued the certificate."""

    certificate: Path
    key: Path
    ca: Path


# Every port free_port handed out in this test run: the kernel may hand a port that was bound
# and closed straight back, so two calls in a row could name the same port (a "dead" backend
# would then be the router itself).
_HANDED_OUT: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now and that no earlier call of this run returned."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def postgres_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise ServiceMissing("PostgreSQL is not installed (Debian package postgresql)")
    return versions[-1].parent


@dataclass(frozen=True)
class Postgres:
    port: int
    database: str
    user: str
    password: str
    host: str = HOST
    socket_dir: Path | None = None  # the superuser's way in (trust over the socket)

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"


@contextmanager
def postgres_server(
    database: str = "citadel_ai",
    user: str = "hxp_router",
    password: str = "router-db-password",
    tls: ServerTls | None = None,
) -> Iterator[Postgres]:
    """A fresh cluster with ``user`` owning ``database`` (password auth over TCP; with ``tls``
    over TLS only)."""
    binaries = postgres_bin()
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="hxp-pg-"))
    data, sockets = base / "data", base / "run"
    sockets.mkdir()
    if as_root:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in args]
        if as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=True, cwd=base)

    port = free_port()
    try:
        run(
            binaries / "initdb",
            *("-D", data, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256"),
        )
        options = f"-p {port} -k {sockets} -c listen_addresses={HOST} -c fsync=off"
        if tls is not None:
            # The postgresql role's rules: the socket for the superuser, TCP over TLS only.
            (data / "pg_hba.conf").write_text(
                "local all postgres trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
            )
            # Copies the server's user can read; the key its own, 0600, as PostgreSQL wants.
            certificate, key = base / "server.crt", base / "server.key"
            for copy, original in ((certificate, tls.certificate), (key, tls.key)):
                copy.write_bytes(original.read_bytes())
                copy.chmod(0o600)
                if as_root:
                    shutil.chown(copy, "postgres", "postgres")
            options += f" -c ssl=on -c ssl_cert_file={certificate} -c ssl_key_file={key}"
        run(binaries / "pg_ctl", "-D", data, "-o", options, "-l", base / "log", "-w", "start")
        psql: list[str | Path] = [
            binaries / "psql",
            "-h",
            sockets,
            "-p",
            str(port),
            "-U",
            "postgres",
            "-q",
        ]
        run(*psql, "-c", f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        run(*psql, "-c", f"CREATE DATABASE {database} OWNER {user}")
        yield Postgres(port, database, user, password, socket_dir=sockets)
    finally:
        if (data / "postmaster.pid").exists():
            run(binaries / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Redis:
    port: int
    password: str
    host: str = HOST
    ca_file: Path | None = None  # TLS only, verified with this CA

    def cli(self, *args: str) -> str:
        tls = ["--tls", "--cacert", str(self.ca_file)] if self.ca_file else []
        done = subprocess.run(
            ["redis-cli", "-h", self.host, "-p", str(self.port), *tls, "--no-auth-warning",
             *args],
            capture_output=True, text=True, check=True,
            env={**os.environ, "REDISCLI_AUTH": self.password},
        )  # fmt: skip
        return done.stdout.strip()


@contextmanager
def redis_server(password: str = "redis-password", tls: ServerTls | None = None) -> Iterator[Redis]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceMissing("redis-server is not installed (Debian package redis-server)")
    base = Path(tempfile.mkdtemp(prefix="hxp-redis-"))
    port = free_port()
    with (base / "log").open("wb") as log:
        # The redis role's TLS settings: no plain port, no client certificates.
        ports = (
            ("--port", str(port))
            if tls is None
            else (
                *("--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"),
                *("--tls-cert-file", str(tls.certificate), "--tls-key-file", str(tls.key)),
                *("--tls-ca-cert-file", str(tls.ca)),
            )
        )
        process = subprocess.Popen(
            [
                binary,
                *ports,
                *("--bind", HOST, "--dir", str(base)),
                *("--save", "", "--appendonly", "no", "--requirepass", password),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Redis(port, password, ca_file=tls.ca if tls else None)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if server.cli("PING") == "PONG":
                    break
            except subprocess.CalledProcessError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(base / 'log').read_text()}")
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)
