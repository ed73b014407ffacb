"""Lab timings: base image, boot of N hosts, idempotent up, reboot, down, memory per idle host.

Run as root: .venv/bin/python benchmarks/lab.py [--hosts 4] [--rounds 3] [--build]
``--build`` also times a cold debootstrap of the base image (into a temporary cache, about a
minute; the machine's cache is not touched). Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from hxp_runtime.lab import SSH_OPTIONS, BaseImage, Lab, cgroup_dirs, load_lab


def timed(action: Callable[[], object]) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


def rss_kib(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cgroup_pids(directory: Path) -> set[int]:
    pids: set[int] = set()
    for procs in directory.rglob("cgroup.procs"):
        pids.update(int(p) for p in procs.read_text().split())
    return pids


def ssh(lab: Lab, host: str, command: str) -> subprocess.CompletedProcess[str]:
    options = [word for option in SSH_OPTIONS for word in option.split()]
    address = str(lab.spec.host(host).address)
    argv = ["ssh", "-i", str(lab.spec.key_file), *options, f"root@{address}", command]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def reboot_seconds(lab: Lab, host: str) -> float:
    before = ssh(lab, host, "cat /proc/sys/kernel/random/boot_id").stdout
    start = time.monotonic()
    ssh(lab, host, "systemctl reboot")
    while True:
        after = ssh(lab, host, "systemctl is-system-running; cat /proc/sys/kernel/random/boot_id")
        words = after.stdout.split()
        if after.returncode == 0 and words[0] == "running" and words[-1] != before.strip():
            return time.monotonic() - start
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--build", action="store_true", help="also time a cold debootstrap")
    args = parser.parse_args()
    image = BaseImage.default()
    print(f"controller: {os.cpu_count()} CPUs")

    if args.build:
        with tempfile.TemporaryDirectory(prefix="hxp-bench-cache-") as cache:
            cold = replace(image, cache_dir=Path(cache))
            print(f"base image build (debootstrap + tar.zst): {timed(cold.ensure):.1f} s")
            print(f"base image archive: {cold.archive.stat().st_size / 2**20:.0f} MiB")
            cold.rootfs.rename(cold.rootfs.with_name("old"))
            print(f"base image extraction from the archive: {timed(cold.ensure):.2f} s")
    image.ensure()

    with tempfile.TemporaryDirectory(prefix="hxp-bench-lab-") as work:
        config = Path(work) / "hxp.yml"
        hosts = "\n".join(
            f"  - {{name: h{i}, address: 10.77.0.{10 + i}, groups: [llm]}}"
            for i in range(args.hosts)
        )
        config.write_text(f"version: 1\nname: bench\nlab: {{state_dir: .}}\nhosts:\n{hosts}\n")
        ups, again, downs, reboots, memory = [], [], [], [], []
        for _ in range(args.rounds):
            lab = Lab(load_lab(config), image, log=lambda _line: None)
            try:
                ups.append(timed(lambda lab=lab: lab.up(auto_network=True)))
                again.append(
                    timed(lambda lab=lab: Lab(load_lab(config), image).up(auto_network=True))
                )
                time.sleep(2)  # let the guests settle before reading their memory
                per_host = [
                    rss_kib(cgroup_pids(cgroup_dirs(lab.spec.name, h.name)[0])) / 1024
                    for h in lab.spec.hosts
                ]
                memory.append(statistics.mean(per_host))
                reboots.append(reboot_seconds(lab, lab.spec.hosts[0].name))
            finally:
                downs.append(timed(lab.down))

    def show(label: str, values: list[float], unit: str = "s") -> None:
        print(
            f"{label}: median {statistics.median(values):.2f} {unit} "
            f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
        )

    show(f"up, {args.hosts} hosts booted to `running` with sshd listening", ups)
    show("up again (idempotent, nothing to do)", again)
    show("reboot inside a guest until `running` with a new boot id", reboots)
    show(f"down, {args.hosts} hosts (processes, mounts, bridge, cgroups removed)", downs)
    show("resident memory per idle host (systemd, journald, networkd, sshd)", memory, "MiB")


if __name__ == "__main__":
    main()
