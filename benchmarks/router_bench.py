"""Router benchmark: the hxp router against the backend called directly, nginx and LiteLLM.

Not a test: it prints numbers (and writes them as JSON with --json) for docs/benchmarks.md.
Everything runs on loopback, in one run, against the same fast OpenAI-compatible backend
(benchmarks/fast_backend.py). Processes are pinned like the reference measurement: the load
generator (wrk, and this script's streaming client) on core 0, the backend and the proxy under
test on core 1 (``taskset``)::

    .venv/bin/python benchmarks/router_bench.py [--duration 10] [--json out.json]

Per target and concurrency (1, 16, 64): requests/s, latency p50/p99 and the added latency
against the direct backend, and the proxy's CPU time per request (utime + stime of its
processes from /proc/<pid>/stat over the measured run, divided by the requests served). Then
the streaming time to first byte at concurrency 16, and its added part.

The hxp router runs as in production: one worker, API key required (a key made with
``hxp keys create``, stored hashed in PostgreSQL), strategies explicit and least_outstanding,
Prometheus metrics, rate limits shared through Redis, usage rows written to PostgreSQL (both
throwaway servers on loopback; the rows are counted after the router's runs).
``--no-dataplane`` leaves PostgreSQL and Redis out (then the key comes from the secrets file).
nginx is a plain reverse proxy with an upstream keep-alive pool. LiteLLM is its proxy server
(``litellm[proxy]``) from a separate venv (``--litellm-venv``, default .cache/venv-bench,
created by ``--install-litellm``), with a master key; it is skipped when absent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hxp_runtime.router.upstream import UpstreamPool  # noqa: E402
from tests.dataplane import free_port, postgres_server, redis_server  # noqa: E402

LOAD_CORE = "0"
SERVER_CORE = "1"
KEY = "hxp-bench-key-0123456789abcdef"
BODY = {
    "model": "fast",
    "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
    "max_tokens": 16,
}
STREAM_BODY = {**BODY, "stream": True}
CLK_TCK = os.sysconf("SC_CLK_TCK")
TMPFS = "/dev/shm"  # noqa: S108 - a tmpfs, like /run on a host
USAGE_FLUSH_S = 5  # the router's usage_flush_interval_s (default)
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Target:
    name: str
    port: int
    headers: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)  # the proxy's processes (empty: direct)
    database: str | None = None  # the router's PostgreSQL (DSN), where its usage rows go

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def pinned(core: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", core, *command]


def wait_http(url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - http only
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (nginx workers, LiteLLM's children)."""
    children = {pid}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.update(process_tree(int(stat.parent.name)))
    return sorted(children)


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of the processes so far."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


# --------------------------------------------------------------------------- the servers


class Bench(contextlib.ExitStack):
    def __init__(self, work: Path) -> None:
        super().__init__()
        self.work = work
        self.pids: dict[str, int] = {}  # name -> pid of what spawn started

    def spawn(self, name: str, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("wb")
        self.callback(log.close)
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
        self.pids[name] = process.pid

        def stop() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

        self.callback(stop)
        return process


def start_backend(bench: Bench) -> int:
    port = free_port()
    bench.spawn(
        "backend",
        pinned(SERVER_CORE, [sys.executable, str(REPO / "benchmarks/fast_backend.py"),
                             "--port", str(port)]),
    )  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/health", 20)
    return port


def start_router(
    bench: Bench,
    backend_port: int,
    dataplane: bool,
    profile: Path | None = None,
    *,
    static_key: bool = False,
    tree: Path = REPO,
    wrapper: tuple[str, ...] = (),
    ready_timeout: float = 30,
    extra_settings: dict[str, Any] | None = None,
    python_path: tuple[str, ...] = (),
) -> Target:
    """The router, as production runs it (see the module's docstring).

    ``static_key`` authenticates with a key from the secrets file even with PostgreSQL (as the
    benchmark did before database keys); ``tree`` is the checkout whose router runs (an older
    commit's, for router_instructions.py); ``wrapper`` goes before the interpreter (valgrind);
    ``extra_settings`` are added to the router's settings, ``python_path`` to its PYTHONPATH
    after ``tree``.
    """
    port = free_port()
    settings: dict[str, Any] = {
        "listen_host": "127.0.0.1",
        "port": port,
        "workers": 1,
        "strategies": ["explicit", "least_outstanding"],
        "rate_limit": {"requests_per_minute": 60_000_000, "tokens_per_minute": 600_000_000},
        "backends": [
            {
                "name": "fast",
                "served_name": "fast",
                "url": f"http://127.0.0.1:{backend_port}",
                "slo": {"latency_ms": 100, "throughput_rps": 10000},
            }
        ],
        **(extra_settings or {}),
    }
    # Without PostgreSQL the key can only come from the secrets file; with it, the benchmark
    # authenticates like a production client: a key made by `hxp keys create`, stored hashed.
    database_key_auth = dataplane and not static_key
    secrets: dict[str, Any] = (
        {} if database_key_auth else {"api_keys": [{"name": "bench", "secret": KEY}]}
    )
    database = None
    if dataplane:
        pg = bench.enter_context(postgres_server())
        database = pg.dsn
        redis = bench.enter_context(redis_server())
        settings["database"] = {"host": pg.host, "port": pg.port, "name": pg.database,
                                "user": pg.user}  # fmt: skip
        settings["redis"] = {"host": redis.host, "port": redis.port}
        secrets["database_password"] = pg.password
        secrets["redis_password"] = redis.password
    (bench.work / "router.yml").write_text(json.dumps(settings))
    (bench.work / "secrets.yml").write_text(json.dumps(secrets))
    (bench.work / "secrets.yml").chmod(0o600)
    process = bench.spawn(
        "router",
        pinned(SERVER_CORE, [*wrapper, sys.executable,
                             *([str(REPO / "benchmarks/cpu_profile.py"), str(profile)]
                               if profile else ["-m"]),
                             "hxp_runtime.router",
                             "--settings", str(bench.work / "router.yml"),
                             "--secrets", str(bench.work / "secrets.yml"),
                             "--log-level", "WARNING"]),
        cwd=tree,
        env={**os.environ, "RUNTIME_DIRECTORY": runtime_directory(bench),
             "PYTHONPATH": os.pathsep.join([str(tree), *python_path]), "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/ready", ready_timeout)
    key = database_key(bench.work) if database_key_auth else KEY
    return Target(
        "hxp router",
        port,
        {"Authorization": f"Bearer {key}"},
        [process.pid],
        database=database,
    )


def runtime_directory(bench: Bench) -> str:
    """A tmpfs directory for the router's state files, as systemd's RuntimeDirectory= gives it.

    A worker rewrites its view there every 0.1 s under load (write, then rename over the old
    file). On a disk file system that rename can wait for the disk (ext4 flushes a file renamed
    over another), and the event loop waits with it; on a host /run is a tmpfs.
    """
    directory = tempfile.mkdtemp(prefix="hxp-bench-run-", dir=TMPFS)
    bench.callback(shutil.rmtree, directory, ignore_errors=True)
    return directory


def database_key(work: Path) -> str:
    """A key made with the router's key admin (``hxp keys create``): stored hashed in PostgreSQL."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("hxp")), "keys", "create", "bench", "--json",
         "--settings", str(work / "router.yml"), "--secrets", str(work / "secrets.yml")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return str(json.loads(done.stdout)["result"]["key"])


def usage_rows(dsn: str) -> tuple[int, int]:
    """Usage rows the router wrote to PostgreSQL, and the requests they count."""

    async def query() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow("SELECT count(*), coalesce(sum(requests), 0) FROM hxp_usage")
        finally:
            await conn.close()
        assert row is not None
        return int(row[0]), int(row[1])

    return asyncio.run(query())


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(bench: Bench, backend_port: int) -> Target | None:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        print("nginx not found (Debian package nginx): skipped", file=sys.stderr)
        return None
    port = free_port()
    conf = bench.work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=bench.work, backend=backend_port, port=port))
    process = bench.spawn(
        "nginx", pinned(SERVER_CORE, [binary, "-c", str(conf), "-p", str(bench.work)])
    )
    wait_http(f"http://127.0.0.1:{port}/health", 20)
    return Target("nginx", port, {}, process_tree(process.pid))


LITELLM_CONF = """
model_list:
  - model_name: fast
    litellm_params:
      model: openai/fast
      api_base: http://127.0.0.1:{backend}/v1
      api_key: unused
general_settings:
  master_key: {key}
litellm_settings:
  drop_params: true
"""


def start_litellm(bench: Bench, backend_port: int, venv: Path) -> Target | None:
    binary = venv / "bin" / "litellm"
    if not binary.exists():
        print(f"LiteLLM not found at {binary} (--install-litellm): skipped", file=sys.stderr)
        return None
    port = free_port()
    conf = bench.work / "litellm.yaml"
    conf.write_text(LITELLM_CONF.format(backend=backend_port, key=KEY))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
            "DISABLE_SCHEMA_UPDATE": "True"}  # fmt: skip
    process = bench.spawn(
        "litellm",
        pinned(SERVER_CORE, [str(binary), "--config", str(conf), "--host", "127.0.0.1",
                             "--port", str(port), "--num_workers", "1"]),
        env=env,
    )  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", 180)
    return Target("LiteLLM", port, {"Authorization": f"Bearer {KEY}"}, process_tree(process.pid))


# --------------------------------------------------------------------------- measuring


def wrk(target: Target, connections: int, seconds: float, work: Path) -> dict[str, Any]:
    script = work / f"wrk-{target.port}.lua"
    headers = {"Content-Type": "application/json", **target.headers}
    lines = ['wrk.method = "POST"', f"wrk.body = '{json.dumps(BODY)}'"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n" + WRK_DONE)
    command = pinned(LOAD_CORE, ["wrk", "-t1", f"-c{connections}",
                                 f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                                 "-s", str(script),
                                 target.url + "/v1/chat/completions"])  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure(
    target: Target, connections: int, seconds: float, warmup: float, work: Path
) -> dict[str, Any]:
    wrk(target, connections, warmup, work)
    user_before, system_before = cpu_seconds(target.pids)
    result = wrk(target, connections, seconds, work)
    user_after, system_after = cpu_seconds(target.pids)
    user, system = user_after - user_before, system_after - system_before
    ok = result["requests"] - result["non2xx"]
    result["rps"] = ok / (result["duration_us"] / 1e6)
    measured = bool(target.pids and ok)
    result["cpu_us_per_request"] = (user + system) / ok * 1e6 if measured else None
    # The kernel's share (system calls, loopback TCP, wake-ups) beside the process's own work.
    result["system_us_per_request"] = system / ok * 1e6 if measured else None
    return result


async def stream_ttfb(target: Target, connections: int, per_connection: int) -> list[float]:
    """Seconds from sending a streaming request to its first body bytes, over keep-alive."""
    authorization = target.headers.get("Authorization", "").removeprefix("Bearer ") or None
    pool = UpstreamPool(target.url, authorization=authorization)
    loop = asyncio.get_running_loop()
    body = json.dumps(STREAM_BODY).encode()
    samples: list[float] = []

    async def one_connection() -> None:
        for _ in range(per_connection):
            started = loop.time()
            response = await pool.post(b"/v1/chat/completions", body, started + 30, buffered=False)
            first = await response.read()
            samples.append(loop.time() - started)
            assert response.status == 200 and first, (response.status, first[:200])
            while await response.read():
                pass
            response.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    pool.close()
    return samples


def run_ttfb(target: Target, connections: int, per_connection: int) -> float:
    asyncio.run(stream_ttfb(target, connections, 2))  # warm-up
    samples = asyncio.run(stream_ttfb(target, connections, per_connection))
    return statistics.median(samples)


# --------------------------------------------------------------------------- report


def report(results: dict[str, Any]) -> str:
    rows = ["| proxy | c | req/s | p50 | p99 | added p50 | added p99 | CPU/request "
            "| of it, kernel |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    direct = results["targets"]["direct"]["load"]
    for name, data in results["targets"].items():
        for c, r in data["load"].items():
            base = direct[c]
            added50 = r["p50_us"] - base["p50_us"] if name != "direct" else None
            added99 = r["p99_us"] - base["p99_us"] if name != "direct" else None
            cpu = r["cpu_us_per_request"]
            kernel = r["system_us_per_request"]
            rows.append(
                f"| {name} | {c} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.3f} ms | "
                f"{r['p99_us'] / 1000:.3f} ms | "
                f"{'-' if added50 is None else f'{added50 / 1000:+.3f} ms'} | "
                f"{'-' if added99 is None else f'{added99 / 1000:+.3f} ms'} | "
                f"{'-' if cpu is None else f'{cpu:.0f} µs'} | "
                f"{'-' if kernel is None else f'{kernel:.0f} µs'} |"
            )
    rows += ["", "| proxy | streaming TTFB p50, c=16 | added |", "|---|---|---|"]
    base_ttfb = results["targets"]["direct"]["ttfb_s"]
    for name, data in results["targets"].items():
        added = "-" if name == "direct" else f"{(data['ttfb_s'] - base_ttfb) * 1000:+.2f} ms"
        rows.append(f"| {name} | {data['ttfb_s'] * 1000:.2f} ms | {added} |")
    return "\n".join(rows)


def syscalls_per_request(target: Target, seconds: float, work: Path) -> dict[str, float]:
    """System calls of the proxy's processes per request at concurrency 1, by name (strace -c).

    A count, unlike CPU time, does not grow when other work shares the core; strace slows the
    proxy down, so this is a run of its own, after the measured ones.
    """
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-o", str(work / "strace.txt"),
         *(arg for pid in target.pids for arg in ("-p", str(pid)))],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)  # attached
    result = wrk(target, 1, seconds, work)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    counts: dict[str, float] = {}
    for line in (work / "strace.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[3].isdigit():
            counts[fields[-1]] = int(fields[3])
    # Requests between attaching and wrk's start are none: wrk is the only client.
    served = result["requests"] or 1
    return {name: count / served for name, count in sorted(counts.items(), key=lambda x: -x[1])}


def run_target(target: Target, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every concurrency, then streaming; for the router, the usage rows it wrote."""
    load = {}
    for c in args.concurrency:
        load[c] = r = measure(target, c, args.duration, args.warmup, work)
        cpu, kernel = r["cpu_us_per_request"], r["system_us_per_request"]
        print(
            f"{target.name:>10} c={c:<3} {r['rps']:>9,.0f} req/s  p50 {r['p50_us']:>6} µs"
            f"  p99 {r['p99_us']:>7} µs  cpu/req {'-' if cpu is None else f'{cpu:.0f} µs'}"
            f" (kernel {'-' if kernel is None else f'{kernel:.0f} µs'})"
            f"  non-2xx {r['non2xx']} errors {r['errors']}",
            flush=True,
        )
    ttfb = run_ttfb(target, 16, args.stream_requests)
    print(f"{target.name:>10} streaming TTFB p50 at c=16: {ttfb * 1000:.2f} ms", flush=True)
    result: dict[str, Any] = {"load": load, "ttfb_s": ttfb}
    if args.syscalls and target.pids:
        calls = result["syscalls_per_request_c1"] = syscalls_per_request(target, 5, work)
        total = sum(n for name, n in calls.items() if name != "total")
        named = ", ".join(f"{name} {n:.2f}" for name, n in calls.items() if name != "total")
        print(f"{target.name:>10} system calls per request at c=1: {total:.2f} ({named})")
    if target.database is not None:
        time.sleep(USAGE_FLUSH_S + 1)  # the router writes its tally every 5 s
        rows, counted = usage_rows(target.database)
        result["usage"] = {"rows": rows, "requests": counted}
        print(f"{target.name:>10} usage in PostgreSQL: {rows} rows, {counted:,} requests")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--stream-requests", type=int, default=40, help="per connection")
    parser.add_argument("--litellm-venv", type=Path, default=REPO / ".cache" / "venv-bench")
    parser.add_argument(
        "--install-litellm",
        action="store_true",
        help="create --litellm-venv with pip install 'litellm[proxy]' first",
    )
    parser.add_argument("--no-dataplane", action="store_true")
    parser.add_argument("--only", nargs="+", help="targets to run (direct always runs)")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out (saves time)")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run everything (wrk, backend, proxies, PostgreSQL, Redis) at this nice value; "
        "on a shared machine a negative one comes closer to the reference's idle cores (root)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="then count each proxy's system calls per request at c=1 (strace -c, 5 s)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="run the router under cProfile (CPU time, benchmarks/cpu_profile.py) and write "
        "its statistics here when it stops (the numbers measured then include its cost)",
    )
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (scripts/setup installs it)", file=sys.stderr)
            return 1
    if os.cpu_count() != 2:
        print(f"note: {os.cpu_count()} cores; the reference pins to cores 0 and 1", file=sys.stderr)
    if args.install_litellm and not (args.litellm_venv / "bin" / "litellm").exists():
        subprocess.run([sys.executable, "-m", "venv", str(args.litellm_venv)], check=True)
        subprocess.run([str(args.litellm_venv / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
                       check=True)  # fmt: skip
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # the streaming client is load too
    os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # every process started from here inherits it

    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": cpu_model(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "nice": args.nice,
        "targets": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hxp-bench-") as tmp, Bench(Path(tmp)) as bench:
        backend = start_backend(bench)
        targets = [Target("direct", backend)]
        wanted = set(args.only or ["hxp router", "nginx", "LiteLLM"])
        if args.no_litellm:
            wanted.discard("LiteLLM")
        if "hxp router" in wanted:
            targets.append(start_router(bench, backend, not args.no_dataplane, args.profile))
        if "nginx" in wanted and (nginx := start_nginx(bench, backend)):
            targets.append(nginx)
        if "LiteLLM" in wanted and (litellm := start_litellm(bench, backend, args.litellm_venv)):
            targets.append(litellm)
        for target in targets:
            results["targets"][target.name] = run_target(target, args, bench.work)
    results["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print()
    print(report(results))
    print(f"\nload average before {results['loadavg_before']}, after {results['loadavg_after']}"
          f"; nice {args.nice}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
