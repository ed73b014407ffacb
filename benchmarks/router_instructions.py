"""The router's CPU instructions per request, counted by callgrind: a figure the machine's load does
not move.

CPU time per request (router_bench.py) grows with whatever else runs on the cores: on a shared
machine nginx's figure moved 1.5-3x between days, so two commits measured on different days
cannot be compared. An instruction count does not depend on that. This runs the router worker
under ``valgrind --tool=callgrind`` with the benchmark's setup (router_bench.start_router: one
worker, uvloop, strategies explicit + least_outstanding, metrics, Redis rate limits, usage rows
to PostgreSQL; ``--no-dataplane`` leaves PostgreSQL and Redis out), sends it the benchmark's
request (the same body and headers as wrk) at concurrency 1 over one keep-alive connection,
and counts::

    .venv/bin/python benchmarks/router_instructions.py [--tree DIR] [--static-key]
        [--requests 300 1500] [--repeat 2] [--no-dataplane] [--json out.json]

After a warm-up the counters are zeroed, ``N`` requests sent, the counters dumped
(``callgrind_control -z`` / ``-d`` through vgdb), and the same for ``M`` requests:
instructions per request = (I(M) - I(N)) / (M - N), so the cost of zeroing and dumping cancels.
Work the router does on a timer (its state file every 0.1 s under load, token debts every
second, usage rows every 5 s) is not per request: it scales with wall time, which valgrind
stretches ~50x and the machine's load varies. Health checks and load polls are spaced out of
the windows (``QUIET_TIMERS``), and so is the state publisher (``quiet_timers/sitecustomize.py``
sets its interval to 30 s; the request path is not touched). What is left is estimated and
taken off: a third window sends the ``N`` requests ``PACE_S`` apart; the instructions it
counts beyond the first window's, over the seconds it took beyond them, are the timed work's
rate, and that rate times the ``M`` window's extra seconds comes off (the figure with it is
printed too). ``--repeat`` does it
again in the same process; two runs of one commit agree within ~1 %.

``--tree DIR`` runs the router package of another checkout (``git worktree add DIR COMMIT``)
with this checkout's venv and setup, for comparing commits: the settings written are the
benchmark's, which every commit since 2026-11-21 reads. ``--static-key`` authenticates with a
key from the secrets file (as the 2026-11-21 benchmark did) instead of a database key made with
``hxp keys create`` (which needs a checkout that has it). The router's hash seed is fixed
(``PYTHONHASHSEED=0``) so that dict and set layouts repeat between runs.

``--callgrind-out DIR`` keeps the dumps: ``callgrind_annotate DIR/cg.<pid>.<n>`` shows the C
functions (the interpreter's and the extensions') the requests spend instructions in.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from router_bench import BODY, Bench, Target, start_backend, start_router

# Work on a timer is counted by wall time, which valgrind stretches and the machine's load varies:
# the checks and load polls of the backend (one HTTP exchange each) are spaced out of the
# measured windows. Every commit since 2026-11-21 reads both settings.
QUIET_TIMERS = {"load_poll_interval_s": 3600, "health_check": {"interval_s": 3600}}
# Between the requests of the paced window: under callgrind one takes 25-45 ms, so the router
# still finishes about one request per 0.1 s tick of its state publisher, as under full load.
PACE_S = 0.05
QUIET_PUBLISHER = Path(__file__).resolve().parent / "quiet_timers"  # its sitecustomize.py
VALGRIND_READY_S = 600  # the router's start-up (imports, schema) under callgrind: 1-3 minutes


class Client:
    """One keep-alive connection sending the benchmark's request, as wrk's script does."""

    def __init__(self, target: Target) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=120)
        self.body = json.dumps(BODY).encode()
        self.headers = {"Content-Type": "application/json", **target.headers,
                        "Content-Length": str(len(self.body))}  # fmt: skip

    def send(self, count: int, pause_s: float = 0) -> float:
        """Send ``count`` requests one after the other (``pause_s`` apart); the seconds taken."""
        started = time.monotonic()
        for _ in range(count):
            time.sleep(pause_s)
            self.connection.putrequest("POST", "/v1/chat/completions", skip_accept_encoding=True)
            for name, value in self.headers.items():
                self.connection.putheader(name, value)
            self.connection.endheaders(self.body)
            response = self.connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"router answered {response.status}: {answer[:300]!r}")
        return time.monotonic() - started


def callgrind(command: str, pid: int) -> None:
    subprocess.run(["callgrind_control", command, str(pid)], check=True, capture_output=True)


def instructions(out: Path, pid: int, before: set[Path]) -> int:
    """Instructions counted in the dump callgrind_control -d just wrote."""
    dumps = set(out.glob(f"cg.{pid}.*")) - before
    if len(dumps) != 1:
        raise RuntimeError(f"expected one new callgrind dump in {out}, found {sorted(dumps)}")
    for line in dumps.pop().read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError("callgrind dump without a summary line")


def window(out: Path, pid: int, client: Client, count: int, pause_s: float = 0) -> dict[str, Any]:
    """Zero the counters, send ``count`` requests, dump: what it counted and how long it took."""
    before = set(out.glob(f"cg.{pid}.*"))
    callgrind("-z", pid)
    seconds = client.send(count, pause_s)
    callgrind("-d", pid)
    return {"requests": count, "seconds": seconds, "instructions": instructions(out, pid, before)}


def per_request(
    small: dict[str, Any], large: dict[str, Any], paced: dict[str, Any]
) -> dict[str, float]:
    """Instructions = fixed + per_request * requests + timed_rate * seconds, solved for the
    last two: ``paced`` has ``small``'s requests spread over more time."""
    timed_rate = (paced["instructions"] - small["instructions"]) / (
        paced["seconds"] - small["seconds"]
    )
    requests = large["requests"] - small["requests"]
    raw = (large["instructions"] - small["instructions"]) / requests
    timed = timed_rate * (large["seconds"] - small["seconds"]) / requests
    return {"raw": raw, "per_request": raw - timed, "timed_rate": timed_rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--static-key", action="store_true")
    parser.add_argument("--no-dataplane", action="store_true")
    parser.add_argument("--requests", type=int, nargs=2, default=[300, 1500], metavar=("N", "M"))
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--callgrind-out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    small_n, large_n = sorted(args.requests)
    if small_n == large_n or shutil.which("valgrind") is None:
        parser.error("needs valgrind (Debian package valgrind) and two different request counts")
    with tempfile.TemporaryDirectory(prefix="hxp-instr-") as tmp, Bench(Path(tmp)) as bench:
        out = args.callgrind_out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p",
                   "--dump-instr=no", "--dump-line=no")  # fmt: skip
        backend = start_backend(bench)
        target = start_router(bench, backend, not args.no_dataplane, static_key=args.static_key,
                              tree=args.tree.resolve(), wrapper=wrapper,
                              ready_timeout=VALGRIND_READY_S,
                              extra_settings=QUIET_TIMERS,
                              python_path=(str(QUIET_PUBLISHER),))  # fmt: skip
        pid = target.pids[0]
        # taskset execs valgrind, valgrind runs python in the same process: one pid throughout
        client = Client(target)
        client.send(args.warmup)
        runs = []
        for _ in range(args.repeat):
            small = window(out, pid, client, small_n)
            large = window(out, pid, client, large_n)
            paced = window(out, pid, client, small_n, PACE_S)
            runs.append({"small": small, "large": large, "paced": paced,
                         **per_request(small, large, paced)})  # fmt: skip
        client.connection.close()
    commit = subprocess.run(["git", "-C", str(args.tree), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    print(f"tree {args.tree} ({commit or '?'}), key "
          f"{'static' if args.static_key or args.no_dataplane else 'database'}, "
          f"{'no dataplane' if args.no_dataplane else 'PostgreSQL + Redis'}")  # fmt: skip
    for number, run in enumerate(runs, 1):
        print(f"run {number}: {run['per_request']:,.0f} instructions/request "
              f"({run['raw']:,.0f} with the timed work, "
              f"{run['timed_rate'] / 1e6:.2f} M instructions/s); "
              f"{small_n} requests {run['small']['instructions']:,} in "
              f"{run['small']['seconds']:.1f} s, {large_n} requests "
              f"{run['large']['instructions']:,} in {run['large']['seconds']:.1f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"commit": commit, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
