"""``hxp-router``: the daemon's command line, its worker lifecycle and its supervisor.

    hxp-router [--settings FILE] [--secrets FILE] [--workers N] [--check | --restart-fields]
    hxp-router admin {backends,drain,undrain} ...   (the admin API's client: admin_cli)

A worker is one process: one event loop (uvloop when it is installed, see :func:`loop_factory`),
one aiohttp server, one :class:`Gateway`. Its lifecycle is
startup (clients, database schema, monitors) -> serve -> shutdown: on SIGTERM it stops
accepting, lets requests in flight finish for up to ``drain_timeout_s``, writes pending usage
and closes its clients. On SIGHUP it re-reads both files and switches to them without closing
a connection (an invalid file is refused and logged; the old settings stay).

With ``workers`` > 1 the first process is a supervisor: it starts that many workers, forwards
SIGTERM and SIGHUP to them, restarts a worker that dies, and aggregates nothing itself (metrics
go through prometheus-client's multiprocess directory).

The listening socket. Under systemd it comes from ``hxp-router.socket`` (socket activation, the
sd_listen_fds protocol: ``LISTEN_PID``/``LISTEN_FDS``, the sockets from fd 3): the supervisor
hands those sockets to every worker, and they outlive the process, so a restart or an upgrade (a new
package, then a restart) leaves new connections waiting in its backlog instead of refused.
A router behind a virtual address gets two sockets, the host's address and the virtual one
(bound with FreeBind before the address arrives), and serves both alike.
Started without one (a test, a manual run) every worker binds the port itself with
SO_REUSEPORT, and a stopped router refuses connections until the next one binds.

Stopping (SIGTERM) drains: the worker stops accepting, answers every request still arriving on
an open connection with ``Connection: close`` for a short grace so that clients open their next
connection on the socket (to the next process), closes the connections left idle, and lets
requests in flight finish for up to ``drain_timeout_s``.

A reload never kills a process. SIGHUP's default action is to terminate, so a worker is started
with SIGHUP blocked (held pending across exec) and takes it over as the first thing it does: a
SIGHUP that came before the worker could act on it is kept and acted on once it serves.
Reloads in a worker run one at a time; signals that arrive while one runs fold into one more.

With ``tls`` in the settings every worker serves HTTPS on that same socket (hxp_runtime.router.tls:
a context per worker; the certificate and key are read again on every reload, so a rotated pair
needs no restart). Plain HTTP to that port is not answered: its handshake fails and the
connection closes.

``--restart-fields`` prints the settings a running worker cannot switch to (RESTART_FIELDS): the
router role runs it on the host to decide between a reload and a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

import asyncpg
from aiohttp import hdrs, web

from hxp_runtime.router import admin_cli
from hxp_runtime.router.admin import AdminApi
from hxp_runtime.router.app import Gateway
from hxp_runtime.router.edge import EdgeRunner, configure_logging
from hxp_runtime.router.front import FrontRunner
from hxp_runtime.router.metrics import MULTIPROC_ENV
from hxp_runtime.router.settings import (
    ADMIN_HOST,
    DEFAULT_SECRETS,
    DEFAULT_SETTINGS,
    RouterSecrets,
    RouterSettings,
    SettingsError,
    load_secrets,
    load_settings,
)
from hxp_runtime.router.shared import STATE_ENV, SharedState
from hxp_runtime.router.tls import TlsEndpoint, TlsError, client_context

log = logging.getLogger("hxp_runtime.router")

# Settings a running worker cannot switch to: they need a restart.
# tls: switching HTTPS on or off, or to other files; the files' content is read on every reload.
RESTART_FIELDS = ("listen_host", "port", "admin_port", "workers", "database", "redis", "tls")
EARLY_EXIT_S = 5.0  # a worker exiting with an error this soon after its start could not start
MAX_RESTARTS, RESTART_WINDOW_S = 5, 60.0  # more worker deaths than this in the window: give up
EXIT_INVALID = 1
# The accept queue of the router's socket: a restart under load queues new connections there
# (hxp-router.socket's Backlog= says the same; asyncio re-listens with this value).
BACKLOG = 4096
# After SIGTERM, how long a connection still open may send one more request (answered with
# Connection: close) before the idle ones are closed: a keep-alive client mid-loop sends its
# next request within milliseconds, and one closed under it while sending may not retry.
CLOSE_GRACE_S = 1.0
SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first socket passed by systemd


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hxp-router", description="OpenAI-compatible gateway in front of vLLM backends."
    )
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS)
    parser.add_argument(
        "--secrets",
        type=Path,
        default=None,
        help=f"secrets file (default: {DEFAULT_SECRETS} when it exists)",
    )
    parser.add_argument("--workers", type=int, default=None, help="override settings.workers")
    parser.add_argument("--check", action="store_true", help="validate both files and exit")
    parser.add_argument(
        "--restart-fields",
        action="store_true",
        help="print the settings a reload cannot apply (a JSON list) and exit",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    # The supervisor's listening sockets, inherited by a worker (pass_fds).
    parser.add_argument(
        "--listen-fd", type=int, action="append", default=[], help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.secrets is None and DEFAULT_SECRETS.exists():
        args.secrets = DEFAULT_SECRETS
    return args


def load_files(args: argparse.Namespace) -> tuple[RouterSettings, RouterSecrets]:
    return load_settings(args.settings), load_secrets(args.secrets)


def inherited_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed to this process (sd_listen_fds), maybe none.

    The variables are removed so that no child takes them for its own; a worker gets the sockets
    from its supervisor with ``--listen-fd`` instead.
    """
    pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if not (pid.isdigit() and int(pid) == os.getpid() and count.isdigit() and int(count) > 0):
        return []
    return [
        listening_socket(fd) for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))
    ]


def listening_socket(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.detach()
        raise OSError(f"fd {fd} is not a listening TCP socket")
    os.set_inheritable(fd, False)  # a worker gets it through pass_fds, nothing else does
    return sock


# --------------------------------------------------------------------------- worker


class EarlyReload:
    """A SIGHUP caught before the process can reload: remembered, then acted on once it can."""

    def __init__(self) -> None:
        self.requested = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def take(self) -> bool:
        requested, self.requested = self.requested, False
        return requested

    def install(self) -> None:
        signal.signal(signal.SIGHUP, self.on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


class Reloader:
    """Reloads of one worker, one at a time; a request while one waits adds nothing."""

    def __init__(
        self, args: argparse.Namespace, gateway: Gateway, tls: TlsEndpoint | None = None
    ) -> None:
        self.args = args
        self.gateway = gateway
        self.tls = tls
        self._lock = asyncio.Lock()
        self._queued = False

    async def request(self) -> None:
        if self._queued:
            return  # the queued reload reads the files as they are when it runs
        self._queued = True
        async with self._lock:
            self._queued = False
            await reload(self.args, self.gateway, self.tls)


async def serve(
    args: argparse.Namespace,
    settings: RouterSettings,
    secrets: RouterSecrets,
    early: EarlyReload | None = None,
    listeners: Sequence[socket.socket] = (),
) -> None:
    loop = asyncio.get_running_loop()
    tls = None
    if settings.tls is not None:
        tls = TlsEndpoint(settings.tls.certificate_file, settings.tls.key_file)
    shared = SharedState(shared_directory(args))
    gateway = Gateway(settings, secrets, shared)
    show_tls_expiry(gateway, tls)
    app = gateway.build_app()

    async def close_when_stopping(request: web.Request, response: web.StreamResponse) -> None:
        # Told so, a client opens its next connection on the socket instead of reusing this one
        # as it is closed: a request sent into a closing connection fails without a retry.
        if runner.closing:
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"

    app.on_response_prepare.append(close_when_stopping)
    runner = FrontRunner(
        app,
        gateway,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=settings.drain_timeout_s,
    )
    await runner.setup()
    sites = make_sites(runner, settings, listeners, reuse_port=args.worker, tls=tls)
    for site in sites:
        await site.start()
    log.info(
        "listening on %s (%d backends%s)",
        ", ".join(site.name for site in sites),
        len(settings.backends),
        ", sockets from systemd" if listeners else "",
    )
    admin: web.AppRunner | None = None
    if secrets.admin_key is not None:
        admin = EdgeRunner(
            AdminApi(gateway, shared).build_app(), access_log=None, handle_signals=False
        )
        await admin.setup()
        await web.TCPSite(admin, ADMIN_HOST, settings.admin_port, reuse_port=args.worker).start()
        log.info("admin API on http://%s:%d", ADMIN_HOST, settings.admin_port)
    freeze_start_up()
    stop = asyncio.Event()
    reloader = Reloader(args, gateway, tls)
    reloads: set[asyncio.Task[None]] = set()

    def on_reload() -> None:
        task = loop.create_task(reloader.request())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    if early is not None and early.take():
        on_reload()
    await stop.wait()
    log.info("draining: up to %.0f s for requests in flight", settings.drain_timeout_s)
    started = time.monotonic()
    runner.begin_closing()  # the front's answers and aiohttp's (close_when_stopping)
    for site in sites:
        await site.stop()  # new connections wait in the socket's backlog for the next process
    await close_grace(runner, min(CLOSE_GRACE_S, settings.drain_timeout_s))
    gateway.draining = True
    if admin is not None:
        await admin.cleanup()
    await runner.cleanup()
    log.info("stopped after a %.1f s drain", time.monotonic() - started)
    if not args.worker:
        shutil.rmtree(shared.directory, ignore_errors=True)


def freeze_start_up() -> None:
    """Keep what start-up made out of the cyclic collector's sight for the worker's life.

    A full collection under load walked all of it (the settings, clients, metrics and the
    libraries' own objects) and held the loop for tens of milliseconds: the p99 at concurrency
    64 went from 34-44 ms to 14-17 ms without that (docs/benchmarks.md). Cyclic garbage among
    those objects would stay; start-up makes none that matters, and what a reload makes is
    collected as usual.
    """
    gc.collect()
    gc.freeze()


def make_sites(
    runner: web.AppRunner,
    settings: RouterSettings,
    listeners: Sequence[socket.socket],
    *,
    reuse_port: bool,
    tls: TlsEndpoint | None = None,
) -> list[web.BaseSite]:
    context = None if tls is None else tls.context
    if listeners:
        return [
            web.SockSite(runner, listener, backlog=BACKLOG, ssl_context=context)
            for listener in listeners
        ]
    site = web.TCPSite(
        runner,
        settings.listen_host,
        settings.port,
        reuse_port=reuse_port,
        backlog=BACKLOG,
        ssl_context=context,
    )
    return [site]


def show_tls_expiry(gateway: Gateway, tls: TlsEndpoint | None) -> None:
    if tls is not None and gateway.metrics.tls_expiry is not None:
        gateway.metrics.tls_expiry.set(tls.expiry)


async def close_grace(runner: web.AppRunner, grace_s: float) -> None:
    """Until every open connection has closed (each answered with Connection: close), or grace_s."""
    step_s = 0.05
    for _ in range(max(1, round(grace_s / step_s))):
        if runner.server is None or not runner.server.connections:
            return
        await asyncio.sleep(step_s)


def shared_directory(args: argparse.Namespace) -> Path:
    """The supervisor's state directory for its workers; a process on its own makes one."""
    if args.worker and STATE_ENV in os.environ:
        return Path(os.environ[STATE_ENV])
    return Path(tempfile.mkdtemp(prefix="state-", dir=os.environ.get("RUNTIME_DIRECTORY")))


async def reload(
    args: argparse.Namespace, gateway: Gateway, tls: TlsEndpoint | None = None
) -> None:
    try:
        settings, secrets = load_files(args)
    except SettingsError as exc:
        log.error("reload refused, the running settings stay:\n%s", exc.render())
        return
    for name in RESTART_FIELDS:
        if getattr(settings, name) != getattr(gateway.settings, name):
            log.warning("reload: %s changed; it takes effect at the next restart", name)
            settings = settings.model_copy(update={name: getattr(gateway.settings, name)})
    if tls is not None and settings.tls is not None:
        try:
            tls.reload(settings.tls.certificate_file, settings.tls.key_file)
        except TlsError as exc:
            log.error("reload refused, the running certificate and settings stay: %s", exc)
            return
        show_tls_expiry(gateway, tls)
    if (secrets.admin_key is None) != (gateway.secrets.admin_key is None):
        log.warning("reload: admin_key added or removed; the admin API follows at the next restart")
    await gateway.apply(settings, secrets)
    log.info("reloaded %s (%d backends)", args.settings, len(settings.backends))


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """uvloop's event loop when it is installed, else asyncio's own; and which one, in words.

    uvloop is a dependency (requirements/router.txt, the router's wheelhouse) because it costs
    less CPU per request (docs/benchmarks.md); a host where it is missing still serves, slower.
    """
    try:
        import uvloop  # noqa: PLC0415 - optional: the fallback is asyncio's loop
    except ImportError:
        return asyncio.new_event_loop, "asyncio (uvloop is not installed)"
    return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"


def run_worker(
    args: argparse.Namespace,
    settings: RouterSettings,
    secrets: RouterSecrets,
    early: EarlyReload | None = None,
    listeners: Sequence[socket.socket] = (),
) -> int:
    if not listeners:
        listeners = [listening_socket(fd) for fd in args.listen_fd]
    new_loop, loop_name = loop_factory()
    log.info("event loop: %s", loop_name)
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(serve(args, settings, secrets, early, listeners))
    except TlsError as exc:
        log.error("start-up failed: TLS: %s", exc)
        return EXIT_INVALID
    except ssl.SSLError as exc:
        # Before OSError (its base): the only TLS connection made at start is PostgreSQL's.
        where = f"{settings.database.host}:{settings.database.port}" if settings.database else ""
        log.error(
            "start-up failed: TLS to PostgreSQL at %s: %s; its certificate must come from the "
            "CA in database.ca_file and name that address",
            where,
            exc,
        )
        return EXIT_INVALID
    except OSError as exc:
        log.error("start-up failed (%s:%d): %s", settings.listen_host, settings.port, exc)
        return EXIT_INVALID
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        where = f"{settings.database.host}:{settings.database.port}" if settings.database else ""
        log.error("start-up failed: PostgreSQL at %s: %s", where, exc)
        return EXIT_INVALID
    return 0


# --------------------------------------------------------------------------- supervisor


class Supervisor:
    def __init__(
        self,
        args: argparse.Namespace,
        settings: RouterSettings,
        count: int,
        early: EarlyReload | None = None,
        listeners: Sequence[socket.socket] = (),
    ) -> None:
        self.args = args
        self.settings = settings
        self.count = count
        self.listeners = listeners  # kept open here too: a restarted worker gets them again
        self.stopping = False
        self.reload = early or EarlyReload()
        self.workers: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self.restarts: list[float] = []
        runtime_dir = os.environ.get("RUNTIME_DIRECTORY")  # systemd RuntimeDirectory=
        self.metrics_dir = tempfile.mkdtemp(prefix="metrics-", dir=runtime_dir or None)
        self.shared = SharedState(Path(tempfile.mkdtemp(prefix="state-", dir=runtime_dir or None)))
        self.env = {
            **os.environ,
            MULTIPROC_ENV: self.metrics_dir,
            STATE_ENV: str(self.shared.directory),
        }

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "hxp_runtime.router", "--worker"]
        cmd += ["--settings", str(self.args.settings), "--log-level", self.args.log_level]
        if self.args.secrets is not None:
            cmd += ["--secrets", str(self.args.secrets)]
        for listener in self.listeners:
            cmd += ["--listen-fd", str(listener.fileno())]
        return cmd

    def spawn(self) -> None:
        # Blocked here, blocked in the child until it can handle it: see the module's doc.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            fds = [listener.fileno() for listener in self.listeners]
            process = subprocess.Popen(self.command(), env=self.env, pass_fds=fds)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.workers[process.pid] = (process, time.monotonic())

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def forward_reload(self) -> None:
        try:
            self.settings, _ = load_files(self.args)
        except SettingsError as exc:
            log.error("reload refused, the running settings stay:\n%s", exc.render())
            return
        for process, _ in self.workers.values():
            process.send_signal(signal.SIGHUP)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        self.reload.install()
        for _ in range(self.count):
            self.spawn()
        log.info("supervising %d workers", self.count)
        code = 0
        while not self.stopping:
            if self.reload.take():
                self.forward_reload()
            for pid, (process, started) in list(self.workers.items()):
                status = process.poll()
                if status is None:
                    continue
                del self.workers[pid]
                self._forget(pid)
                now = time.monotonic()
                # A worker that reports a start-up failure itself (exit 1: port taken, database
                # unreachable) would fail again; so would one that keeps dying.
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
                if (status > 0 and now - started < EARLY_EXIT_S) or len(
                    self.restarts
                ) >= MAX_RESTARTS:
                    log.error("worker %d failed (exit %s); stopping the router", pid, status)
                    self.stopping, code = True, EXIT_INVALID
                    break
                log.error("worker %d died (exit %s); starting another", pid, status)
                self.restarts.append(now)
                self.spawn()
            time.sleep(0.2)
        self.stop_workers()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        shutil.rmtree(self.shared.directory, ignore_errors=True)
        return code

    def stop_workers(self) -> None:
        for process, _ in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_s + 5
        for process, _ in self.workers.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not drain in time; killing it", process.pid)
                process.kill()
                process.wait()

    def _forget(self, pid: int) -> None:
        from prometheus_client import multiprocess  # noqa: PLC0415 - needs the env set

        multiprocess.mark_process_dead(pid, self.metrics_dir)
        self.shared.forget(pid)


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["admin"]:
        return admin_cli.main(arguments[1:])
    early = EarlyReload()
    early.install()  # before anything slow: a SIGHUP now must not end the process
    args = parse_args(argv)
    if args.restart_fields:
        # The router role asks the installed router, so the answer matches the code that runs.
        print(json.dumps(RESTART_FIELDS))
        return 0
    configure_logging(args.log_level, journal="JOURNAL_STREAM" in os.environ)
    try:
        settings, secrets = load_files(args)
        if settings.tls is not None:
            # The pair loads as a worker will load it: the role checks a new one so.
            TlsEndpoint(settings.tls.certificate_file, settings.tls.key_file)
        for service in (settings.database, settings.redis):
            if service is not None and service.ca_file is not None:
                client_context(service.ca_file)  # the CA PostgreSQL or Redis is verified with
    except SettingsError as exc:
        print(f"invalid: {exc.render()}", file=sys.stderr)
        return EXIT_INVALID
    except TlsError as exc:
        print(f"invalid: {args.settings}: tls: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.check:
        print(f"valid: {args.settings}: {len(settings.backends)} backends")
        return 0
    return start(args, settings, secrets, early)


def start(
    args: argparse.Namespace, settings: RouterSettings, secrets: RouterSecrets, early: EarlyReload
) -> int:
    """A worker, or a supervisor of several, on systemd's socket when it passed one."""
    try:
        listeners = [] if args.worker else inherited_sockets()
    except OSError as exc:
        log.error("start-up failed: the sockets from systemd: %s", exc)
        return EXIT_INVALID
    count = args.workers or settings.workers
    if args.worker or count == 1:
        return run_worker(args, settings, secrets, early, listeners)
    return Supervisor(args, settings, count, early, listeners).run()


if __name__ == "__main__":
    sys.exit(main())
