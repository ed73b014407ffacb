"""`hxp lab …`: local systemd hosts for the hosts of an hxp.yml (see hxp_runtime.lab).

Exit codes as for the rest of `hxp`: 0 success, 1 the config or the lab is not usable, 2 usage.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from hxp_runtime.cli_output import EXIT_FAILED, EXIT_USAGE, JSON_FLAG, CliProblem, Kind, Report
from hxp_runtime.config import ConfigError
from hxp_runtime.lab.errors import LabError
from hxp_runtime.lab.image import BaseImage
from hxp_runtime.lab.inventory import lab_summary, ssh_argv
from hxp_runtime.lab.lifecycle import Lab, remove_run
from hxp_runtime.lab.spec import load_lab
from hxp_runtime.lab.state import RUN_ENV, registered_labs

lab_app = typer.Typer(
    help="Local lab: one systemd-nspawn host (systemd, sshd) per host of hxp.yml, on a bridge.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

ConfigFile = Annotated[Path, typer.Argument(help="the deployment file (hxp.yml) of the lab")]
JsonFlag = Annotated[bool, typer.Option(JSON_FLAG, help="print machine-readable JSON")]


def _lab_failed(report: Report, message: str) -> NoReturn:
    report.fail([CliProblem(Kind.LAB, message, "(lab)")], EXIT_FAILED)


@contextlib.contextmanager
def _exit_on_lab_error(report: Report) -> Iterator[None]:
    """Turn a LabError into its message and exit status 1."""
    try:
        yield
    except LabError as exc:
        _lab_failed(report, str(exc))


def _require_root(report: Report) -> None:
    if os.geteuid() != 0:
        _lab_failed(
            report, "the lab needs root (bridges, mounts, cgroups, systemd-nspawn); run it as root"
        )


def _open(report: Report, file: Path) -> Lab:
    """The lab of ``file``, or exit with every problem (file, line, field, what to do)."""
    _require_root(report)
    if not file.is_file():
        problem = "file not found; check the path"
        report.fail([CliProblem(Kind.USAGE, problem, "file", str(file))], EXIT_USAGE)
    try:
        spec = load_lab(file)
    except ConfigError as exc:
        report.invalid(exc)
    return Lab(spec, BaseImage.default(), log=lambda line: err.print(line, highlight=False))


@lab_app.command()
def up(
    file: ConfigFile,
    auto_network: Annotated[
        bool,
        typer.Option(
            "--auto-network",
            help="take the first free 10.77.N.0/24 and bridge hxpbrN instead of lab.bridge and "
            "lab.gateway (hosts keep their host part), so several labs run side by side",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Boot every host of the config (idempotent) and write an Ansible inventory for them."""
    report = Report("lab up", as_json, str(file))
    lab = _open(report, file)
    started = time.monotonic()
    fresh = not lab.spec.state_dir.exists()
    try:
        spec = lab.up(auto_network=auto_network)
    except LabError as exc:
        half_up = fresh and lab.spec.state_dir.exists()  # this `up` created something
        hint = f"\nthe lab is half up: `hxp lab down {file}` removes what was created"
        _lab_failed(report, f"{exc}{hint if half_up else ''}")
    if as_json:
        report.succeed(lab_summary(spec))
        return
    out.print(
        f"[green]lab {spec.name} up[/] in {time.monotonic() - started:.1f}s: "
        f"{len(spec.hosts)} hosts on {spec.bridge} ({spec.gateway}), "
        f"apt proxy {spec.apt_proxy_url}\ninventory: {spec.inventory_file}\n"
        f"CA (clients verify router.tls, PostgreSQL and Redis with it): {spec.ca_dir / 'ca.crt'}",
        highlight=False,
    )


@lab_app.command()
def down(file: ConfigFile) -> None:
    """Stop the hosts and remove everything `up` created (processes, mounts, bridge, cgroups)."""
    report = Report("lab down", False, str(file))
    lab = _open(report, file)
    with _exit_on_lab_error(report):
        removed = lab.down()
    message = "removed" if removed else "was not up"
    out.print(f"lab {lab.spec.name} {message}", highlight=False)


@lab_app.command()
def poweroff(
    file: ConfigFile,
    hosts: Annotated[list[str], typer.Argument(help="the hosts to power off", show_default=False)],
) -> None:
    """Power hosts off (their systemd stops every service, then their network link goes) and
    keep their disks: `hxp lab up` boots them again as they were."""
    report = Report("lab poweroff", False, str(file))
    lab = _open(report, file)
    with _exit_on_lab_error(report):
        was_running = lab.power_off(hosts)
    for name in dict.fromkeys(hosts):
        state = "powered off" if name in was_running else "was not running"
        out.print(f"host {name} {state}", highlight=False)


@lab_app.command()
def status(file: ConfigFile, as_json: JsonFlag = False) -> None:
    """Show each host: address, whether it runs, and its systemd state."""
    report = Report("lab status", as_json, str(file))
    lab = _open(report, file)
    with _exit_on_lab_error(report):
        hosts = lab.status()
    if as_json:
        summary: dict[str, object] = {"name": lab.spec.name}
        if hosts is not None:
            summary = lab_summary(lab.spec)
        summary["up"] = hosts is not None
        summary["hosts"] = [h.as_json() for h in hosts or []]
        report.succeed(summary)
        return
    if hosts is None:
        out.print(f"lab {lab.spec.name} is down", highlight=False)
        return
    table = Table(title=f"lab {lab.spec.name} on {lab.spec.bridge} ({lab.spec.gateway})")
    for column in ("host", "address", "running", "systemd"):
        table.add_column(column)
    for h in hosts:
        table.add_row(h.name, h.address, "yes" if h.running else "no", h.system_state)
    out.print(table)


@lab_app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(
    file: ConfigFile,
    host: Annotated[str, typer.Argument(help="host name from hxp.yml")],
    command: Annotated[
        list[str] | None, typer.Argument(help="command to run instead of a shell")
    ] = None,
) -> None:
    """Open a root shell (or run COMMAND) on a lab host."""
    report = Report("lab ssh", False, str(file))
    lab = _open(report, file)
    with _exit_on_lab_error(report):
        if lab.status() is None:
            raise LabError(f"lab {lab.spec.name} is down; start it with `hxp lab up {file}`")
        argv = ssh_argv(lab.spec, host)
    os.execvp("ssh", [*argv, *(command or [])])  # noqa: S606 - replace this process by ssh


@lab_app.command(name="list")
def list_labs(as_json: JsonFlag = False) -> None:
    """List the labs that are up on this machine (any config, any checkout)."""
    labs = registered_labs()
    if as_json:
        rows = [{"name": r.name, "state_dir": str(r.state_dir), "run": r.run} for r in labs]
        Report("lab list", as_json).succeed({"labs": rows})
        return
    if not labs:
        out.print("no lab is up on this machine")
        return
    table = Table(title="labs on this machine")
    for column in ("name", "state", f"run (${RUN_ENV})"):
        table.add_column(column)
    for r in labs:
        table.add_row(r.name, str(r.state_dir), r.run)
    out.print(table)


@lab_app.command()
def cleanup(
    run: Annotated[
        str, typer.Option("--run", help=f"remove the labs created with ${RUN_ENV} set to this")
    ],
) -> None:
    """Remove every lab a run created (scripts/test calls this in its exit trap)."""
    report = Report("lab cleanup", False)
    _require_root(report)
    if not run:
        problem = "--run must not be empty (it would match every lab made outside a test run)"
        report.fail([CliProblem(Kind.USAGE, problem, "--run")], EXIT_USAGE)
    with _exit_on_lab_error(report):
        removed = remove_run(run, BaseImage.default())
    for name in removed:
        out.print(f"lab {name} removed", highlight=False)


@lab_app.command()
def image() -> None:
    """Build (debootstrap) or extract the cached base rootfs the lab hosts start from."""
    report = Report("lab image", False)
    _require_root(report)
    started = time.monotonic()
    with _exit_on_lab_error(report):
        base = BaseImage.default()
        rootfs = base.ensure(lambda line: err.print(line, highlight=False))
    out.print(
        f"base image {base.archive} ready in {time.monotonic() - started:.1f}s ({rootfs})",
        highlight=False,
    )
