"""What a deployed stack costs in CPU with no traffic: every process on this machine (the lab's
hosts run as containers here, so theirs too), grouped by what it is, over a window::

    .venv/bin/python benchmarks/idle_cpu.py [--seconds 30] [--scrapes PID]

Prints the machine's busy cores over the window and the share of one core each group took:
vLLM's API servers, its engine and worker processes, the router's processes, then everything
else by process name. ``--scrapes PID`` also sends 100 requests for /metrics to the vLLM API
server with that pid, from inside its network namespace (the lab's firewall admits only the
router), and prints the CPU that server spent per answer. Read from /proc; Linux only, root for
``--scrapes``.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")
SCRAPE = """
import sys, urllib.request
for _ in range(100):
    urllib.request.urlopen(sys.argv[1], timeout=10).read()
"""


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def processes() -> dict[int, tuple[str, int]]:
    """pid -> (group, CPU ticks so far) for every process that can be read now."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/comm") as comm:
                name = comm.read().strip()
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
            found[pid] = (group(name, command), cpu_ticks(pid))
        except (OSError, IndexError, ValueError):
            continue
    return found


def group(name: str, command: str) -> str:
    if "vllm_launcher" in command:
        return "vLLM API servers"
    if name.startswith("VLLM::"):
        return f"vLLM {name.removeprefix('VLLM::')}"
    if "hxp_runtime.router" in command:
        return "hxp router (supervisor and workers)"
    return name


def busy_ticks() -> int:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def tree_ticks(pid: int) -> int:
    """CPU ticks so far of ``pid`` and every process below it (hxp's launcher runs vLLM's API
    server as its child)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {pid}, True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    total = 0
    for member in tree:
        try:
            total += cpu_ticks(member)
        except (OSError, IndexError, ValueError):
            continue
    return total


def scrape_cost(pid: int) -> float:
    """CPU seconds the vLLM server ``pid`` (its process tree) spent per /metrics answer, less
    what it spends meanwhile without them."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        argv = cmdline.read().decode().split("\0")
    url = f"http://{argv[argv.index('--host') + 1]}:{argv[argv.index('--port') + 1]}/metrics"
    idle = tree_ticks(pid)
    time.sleep(5)
    idle = tree_ticks(pid) - idle
    started, before = time.monotonic(), tree_ticks(pid)
    subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", SCRAPE, url], check=True)
    spent = tree_ticks(pid) - before - idle * (time.monotonic() - started) / 5
    return spent / TICKS / 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--scrapes", type=int, metavar="PID", help="a vLLM API server's pid")
    args = parser.parse_args()
    first, busy = processes(), busy_ticks()
    time.sleep(args.seconds)
    last, busy = processes(), busy_ticks() - busy
    shares: collections.Counter[str] = collections.Counter()
    for pid, (name, ticks) in last.items():
        if pid in first:
            shares[name] += ticks - first[pid][1]
    print(f"machine: {busy / TICKS / args.seconds:.3f} cores busy over {args.seconds:.0f} s")
    for name, ticks in shares.most_common(10):
        print(f"{100 * ticks / TICKS / args.seconds:6.1f} % of a core  {name}")
    if args.scrapes:
        print(f"/metrics of vLLM pid {args.scrapes}: {1000 * scrape_cost(args.scrapes):.1f} ms CPU")


if __name__ == "__main__":
    main()
