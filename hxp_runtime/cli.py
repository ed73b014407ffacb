"""The `hxp` command line.

Exit codes: 0 success, 1 the configuration (or what it describes) is invalid, 2 usage error
(unknown option, missing argument, a FILE that does not exist or is a directory). With --json
every command prints one envelope of the shape hxp.cli/1 on stdout, failures and usage errors
included (hxp_runtime.cli_output); `hxp loadtest --json` prints its report object instead, the
shape load checks read, and only its usage errors as the envelope. FILE ``-`` reads hxp.yml
from stdin.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table

from hxp_runtime import __version__
from hxp_runtime.bundle_cli import bundle_app
from hxp_runtime.cli_output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    JSON_FLAG,
    CliProblem,
    Kind,
    Report,
    envelope,
    print_json,
)
from hxp_runtime.config import ConfigError, HxpConfig, load_config, plan_deployment, plan_swaps
from hxp_runtime.flows import Flow, flow_matrix
from hxp_runtime.lab.cli import lab_app
from hxp_runtime.labmodels import model as lab_model
from hxp_runtime.loadtest import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DURATION_S,
    DEFAULT_MAX_TOKENS,
    DEFAULT_TIMEOUT_S,
    Client,
)
from hxp_runtime.planner import Instance, Plan, SwapFit
from hxp_runtime.router.keys_cli import keys_app
from hxp_runtime.yamlsource import MAX_BYTES

STDIN = Path("-")
STDIN_NAME = Path("<stdin>")
# A pipe has no width: tables are as wide as their rows, so grep and awk see every name whole.
PIPE_WIDTH = 10_000

app = typer.Typer(
    name="hxp",
    help="Validate, plan, render and deploy a self-hosted multi-model LLM serving stack.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lab_app.command(name="model")(lab_model)
app.add_typer(lab_app, name="lab")
app.add_typer(bundle_app, name="bundle")
app.add_typer(keys_app, name="keys")
out = Console()
err = Console(stderr=True)

ConfigFile = Annotated[Path, typer.Argument(help="the deployment file (hxp.yml); - reads stdin")]
JsonFlag = Annotated[bool, typer.Option(JSON_FLAG, help="print machine-readable JSON")]


def print_version(wanted: bool) -> None:
    if wanted:
        print(f"hxp {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=print_version, is_eager=True, help="print hxp's version"
        ),
    ] = False,
) -> None:
    """Options of `hxp` itself; the commands carry their own."""


def config_name(file: Path) -> Path:
    """How the config is named in messages, in the JSON envelope and in rendered files."""
    return STDIN_NAME if file == STDIN else file


def report_for(command: str, file: Path, as_json: bool) -> Report:
    return Report(command, as_json, str(config_name(file)))


def load_or_exit(report: Report, file: Path, *, check_secrets: bool = False) -> HxpConfig:
    """Load ``file`` (``-``: stdin); on failure report every problem and exit (2: FILE missing
    or a directory, 1: invalid). ``check_secrets``: every env:/file: secret must resolve here."""
    text = None
    if file == STDIN:
        # One byte over the loader's limit is enough for it to refuse the input.
        text = sys.stdin.buffer.read(MAX_BYTES + 1)
    elif file.is_dir():
        problem = "is a directory; give the hxp.yml file inside it"
        report.fail([CliProblem(Kind.USAGE, problem, "file", str(file))], EXIT_USAGE)
    elif not file.exists():
        problem = "file not found; check the path"
        report.fail([CliProblem(Kind.USAGE, problem, "file", str(file))], EXIT_USAGE)
    try:
        return load_config(config_name(file), text=text, check_secrets=check_secrets)
    except ConfigError as exc:
        report.invalid(exc)


@app.command()
def validate(file: ConfigFile, as_json: JsonFlag = False) -> None:
    """Check hxp.yml: types, cross-references, ports, secrets and GPU fit."""
    report = report_for("validate", file, as_json)
    cfg = load_or_exit(report, file)
    if as_json:
        report.succeed(
            {
                "name": cfg.name,
                "hosts": [h.name for h in cfg.hosts],
                "models": [m.name for m in cfg.models],
            }
        )
        return
    out.print(
        f"[green]valid:[/] {escape(str(config_name(file)))}: deployment {cfg.name!r}, "
        f"{len(cfg.hosts)} hosts, {len(cfg.models)} models",
        highlight=False,
    )


def plan_json(plan: Plan, swaps: Mapping[str, SwapFit]) -> dict[str, Any]:
    answer = {
        "instances": [_instance_json(i, swaps) for i in plan.instances],
        "gpus": [
            {
                "host": g.host,
                "index": g.index,
                "name": g.name,
                "memory_gib": g.memory_gib,
                "planned_gib": round(g.planned_gib, 3),
                "utilization_sum": g.utilization_sum,
                "models": list(g.tenants),
            }
            for g in plan.gpus
        ],
    }
    # Models split across hosts only: the headless stages (their heads are instances).
    if plan.workers:
        answer["pipeline_workers"] = [_instance_json(w, swaps) for w in plan.workers]
    return answer


def _instance_json(i: Instance, swaps: Mapping[str, SwapFit]) -> dict[str, Any]:
    stage = (
        {}
        if i.layers is None
        else {
            "pipeline": {
                "rank": i.pipeline_rank,
                "size": i.pipeline_size,
                "layers": list(i.layers),
            }
        }
    )
    return {
        "model": i.model,
        "host": i.host,
        "port": i.port,
        "device": i.device,
        "gpu_ids": list(i.gpu_ids),
        "tensor_parallel_size": i.tensor_parallel_size,
        "weights_gib": round(i.weights_gib, 3),
        "kv_cache_gib": round(i.kv_gib, 3),
        "need_per_gpu_gib": round(i.need_per_gpu_gib, 3),
        "gpu_memory_utilization": i.gpu_memory_utilization,
        "headroom_gib": None if i.headroom_gib is None else round(i.headroom_gib, 3),
        "start_order": i.start_order,
        "sized_from": i.shape_origin,
        "rollout": swaps[i.model].describe(),
        **stage,
    }


def table_console() -> Console:
    """stdout for tables: a terminal's width, or no limit when stdout is a pipe or a file."""
    return out if out.is_terminal else Console(width=PIPE_WIDTH)


def plan_table(title: str, columns: dict[str, JustifyMethod]) -> Table:
    """A table whose cells fold in a narrow terminal instead of ending in an ellipsis."""
    table = Table(title=title, header_style="bold")
    for column, justify in columns.items():
        table.add_column(column, justify=justify, overflow="fold")
    return table


@app.command()
def plan(
    file: ConfigFile,
    as_json: JsonFlag = False,
    flows: Annotated[
        bool, typer.Option("--flows", help="also show the flow matrix the firewall admits")
    ] = False,
) -> None:
    """Show where each model runs: GPUs, tensor parallelism, memory, start order."""
    report = report_for("plan", file, as_json)
    cfg = load_or_exit(report, file)
    result = plan_deployment(cfg)
    swaps = plan_swaps(cfg, result)
    matrix = flow_matrix(cfg, result) if flows else None
    if as_json:
        answer = plan_json(result, swaps)
        if matrix is not None:
            answer["flows"] = [f.as_json() for f in matrix]
        report.succeed(answer)
        return
    console = table_console()
    if matrix is not None:
        print_flows(console, cfg, matrix)
    table = plan_table(
        f"GPU plan for {cfg.name}",
        {
            "model": "left",
            "host": "left",
            "GPUs": "left",
            "TP": "right",
            "weights GiB": "right",
            "KV GiB": "right",
            "need/GPU GiB": "right",
            "gpu_mem_util": "right",
            "headroom GiB": "right",
            "start": "right",
            "new version": "left",
        },
    )
    for i in (s for server in result.instances for s in _with_stages(result, server)):
        table.add_row(
            _model_cell(i),
            i.host,
            ",".join(map(str, i.gpu_ids)) if i.gpu_ids else "cpu",
            str(i.tensor_parallel_size),
            f"{i.weights_gib:.1f}",
            f"{i.kv_gib:.1f}",
            f"{i.need_per_gpu_gib:.1f}" if i.device == "cuda" else "-",
            f"{i.gpu_memory_utilization:.3f}" if i.gpu_memory_utilization else "-",
            f"{i.headroom_gib:.1f}" if i.headroom_gib is not None else "-",
            str(i.start_order),
            swaps[i.model].describe(),
        )
    console.print(table)
    if result.gpus:
        gpus = plan_table(
            "GPUs",
            dict.fromkeys(
                ("host", "GPU", "memory GiB", "planned GiB", "util sum", "models"), "left"
            ),
        )
        for g in result.gpus:
            gpus.add_row(
                g.host,
                f"{g.index} {g.name}",
                f"{g.memory_gib:.0f}",
                f"{g.planned_gib:.1f}",
                f"{g.utilization_sum:.3f}",
                ", ".join(g.tenants),
            )
        console.print(gpus)
    console.print(
        "sizes in GiB (2^30 bytes); KV = worst case (max_model_len x max_num_seqs); "
        "headroom = room vLLM gets beyond the planned need"
    )


def _with_stages(plan: Plan, server: Instance) -> list[Instance]:
    """A server, and after the head of a model split across hosts its other stages."""
    return plan.stages(server.model) if server.layers is not None else [server]


def _model_cell(i: Instance) -> str:
    if i.layers is None:
        return i.model
    first, end = i.layers
    role = "head" if i.pipeline_rank == 0 else "headless"
    return (
        f"{i.model} stage {i.pipeline_rank + 1}/{i.pipeline_size} ({role}), "
        f"layers {first}-{end - 1}"
    )


def print_flows(console: Console, cfg: HxpConfig, matrix: list[Flow]) -> None:
    table = plan_table(
        f"Flows of {cfg.name}",
        dict.fromkeys(("source", "from", "to", "port", "why"), "left"),
    )
    for f in matrix:
        to = f"{f.destination} (egress)" if f.egress else f.destination
        table.add_row(
            f.source,
            ", ".join(f.networks) or "-",
            to,
            f"{f.port}{f'-{f.port_end}' if f.port_end else ''}/{f.protocol}",
            f.reason,
        )
    console.print(table)


def write_inventory_or_exit(
    report: Report, cfg: HxpConfig, out_dir: Path, source: Path
) -> list[Path]:
    # Here, not at the top: rendering loads the dashboards, alerts and the router's schema,
    # which `hxp status` and most other commands never use.
    from hxp_runtime.render import render_inventory  # noqa: PLC0415

    try:
        return render_inventory(cfg, plan_deployment(cfg), out_dir, source)
    except OSError as exc:
        problem = (
            f"cannot write the inventory into {out_dir}: {exc.strerror} ({exc.filename}); "
            "choose a writable directory with --out"
        )
        report.fail([CliProblem(Kind.IO, problem, "--out")], EXIT_FAILED)


@app.command()
def render(
    file: ConfigFile,
    out_dir: Annotated[Path, typer.Option("--out", help="inventory directory to write")],
    as_json: JsonFlag = False,
) -> None:
    """Write the Ansible inventory (hosts, group_vars, host_vars) the playbooks run on."""
    report = report_for("render", file, as_json)
    cfg = load_or_exit(report, file, check_secrets=True)
    written = write_inventory_or_exit(report, cfg, out_dir, config_name(file))
    if as_json:
        report.succeed({"inventory": str(out_dir), "files": [str(p) for p in written]})
        return
    out.print(f"[green]rendered[/] {len(written)} files into {out_dir}", highlight=False)


def lab_inventory(report: Report, file: Path) -> Path:
    """The inventory `hxp lab up` wrote for the lab of ``file`` (it may not exist yet)."""
    from hxp_runtime.lab import load_lab  # noqa: PLC0415 - only configs with a lab need it

    if file == STDIN:
        problem = (
            "a config with a lab: section cannot come from stdin: its lab's state lives next "
            "to the file; give the file's path"
        )
        report.fail([CliProblem(Kind.USAGE, problem, "file", str(STDIN_NAME))], EXIT_USAGE)
    try:
        return load_lab(file).inventory_file
    except ConfigError as exc:
        report.invalid(exc)


@app.command()
def deploy(
    file: ConfigFile,
    inventory_dir: Annotated[
        Path | None,
        typer.Option("--inventory-dir", help="where to render (default: .hxp/NAME/inventory)"),
    ] = None,
    playbook: Annotated[str, typer.Option(help="playbook under playbooks/")] = "site.yml",
    check: Annotated[bool, typer.Option("--check", help="dry run with diffs")] = False,
    limit: Annotated[str | None, typer.Option(help="only these hosts or groups")] = None,
    tags: Annotated[str | None, typer.Option(help="only tasks with these tags")] = None,
    extra_inventory: Annotated[
        list[Path] | None,
        typer.Option("--inventory", help="another inventory to merge (e.g. SSH settings)"),
    ] = None,
    expect_no_changes: Annotated[
        bool,
        typer.Option(help="fail if any task changed something (an idempotence check)"),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Render the inventory and run the playbooks (ansible-runner) against it.

    For a config with a `lab:` section whose lab is up, the lab's inventory (SSH key, proxy)
    is merged in automatically. With --json the progress goes to stderr.
    """
    from hxp_runtime.deploy import run_playbook  # noqa: PLC0415 - ansible-runner loads slowly

    report = report_for("deploy", file, as_json)
    log = err if as_json else out  # stdout holds only the envelope
    cfg = load_or_exit(report, file, check_secrets=True)
    lab = None if cfg.lab is None else lab_inventory(report, file)
    state = Path(".hxp") / cfg.name
    inventory = inventory_dir or state / "inventory"
    write_inventory_or_exit(report, cfg, inventory, config_name(file))
    log.print(f"inventory rendered into {inventory}", highlight=False)
    inventories = [inventory / "hosts.yml", *(extra_inventory or [])]
    if lab is not None and lab.is_file():
        log.print(f"merging the lab's inventory {lab}", highlight=False)
        inventories.append(lab)
    missing = [p for p in inventories if not p.is_file()]
    if missing:
        problem = "inventory not found; check --inventory"
        report.fail(
            [CliProblem(Kind.USAGE, problem, "--inventory", str(p)) for p in missing], EXIT_USAGE
        )
    rc, progress = run_playbook(
        inventories,
        playbook=playbook,
        state_dir=state / "runner",
        check=check,
        limit=limit,
        tags=tags,
        console=log,
    )
    if rc:
        # A playbook can fail before any task (a syntax error): the runner's log says why.
        failures = progress.failures or [f"ansible-playbook exited with {rc}; see {state}/runner"]
        report.fail(
            [CliProblem(Kind.DEPLOY, line, "(playbook)") for line in failures],
            EXIT_FAILED,
            human=f"[bold red]deploy failed[/] ({len(progress.failures)} failed tasks)",
        )
    changed = sum(counts["changed"] for counts in progress.counts.values())
    if expect_no_changes and changed:
        listing = "".join(f"\n  {escape(line)}" for line in progress.changes)
        report.fail(
            [
                CliProblem(Kind.DEPLOY, f"{line}: changed something", "(playbook)")
                for line in progress.changes
            ],
            EXIT_FAILED,
            human=f"[bold red]not idempotent:[/] {changed} tasks changed something:{listing}",
        )
    if as_json:
        report.succeed(
            {
                "inventory": str(inventory),
                "inventories": [str(p) for p in inventories],
                "playbook": playbook,
                "check": check,
                "changed": changed,
                "hosts": {host: dict(counts) for host, counts in progress.counts.items()},
                "skipped": [
                    {"service": s.service, "host": s.host, "reason": s.reason}
                    for s in progress.skipped
                ],
            }
        )
        return
    out.print("[green]deploy finished[/]")


def read_key_file(report: Report, key_file: Path) -> str:
    """The API key in ``key_file`` (first line); a key others can read gets a warning."""
    try:
        key = key_file.read_text(encoding="utf-8").strip()
        mode = key_file.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot read the API key: {getattr(exc, 'strerror', None) or exc}"
        report.fail([CliProblem(Kind.USAGE, problem, "--key-file", str(key_file))], EXIT_USAGE)
    if not key:
        problem = "the key file is empty; write the router API key into it"
        report.fail([CliProblem(Kind.USAGE, problem, "--key-file", str(key_file))], EXIT_USAGE)
    if mode & 0o077:
        err.print(
            f"[yellow]warning:[/] {escape(str(key_file))} can be read by other users "
            f"(mode {mode & 0o777:04o}); chmod 600 it",
            highlight=False,
        )
    return key


@app.command()
def loadtest(
    url: Annotated[
        str, typer.Argument(help="the router's base URL, http://HOST:PORT or https://HOST:PORT")
    ],
    key_file: Annotated[
        Path, typer.Option("--key-file", help="file holding a router API key (mode 0600)")
    ],
    models: Annotated[
        list[str], typer.Option("--model", help="a model to send to; repeat for several")
    ],
    ca: Annotated[
        Path | None,
        typer.Option(
            "--ca", help="PEM CA certificate(s) to verify an https router with (default: system)"
        ),
    ] = None,
    embeddings_models: Annotated[
        list[str] | None,
        typer.Option("--embeddings-model", help="a model sent /v1/embeddings; repeatable"),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="requests in flight at once")
    ] = DEFAULT_CONCURRENCY,
    requests: Annotated[int | None, typer.Option(min=1, help="stop after this many")] = None,
    duration: Annotated[
        float | None,
        typer.Option(min=0.001, help="stop sending after this many seconds (default 10)"),
    ] = None,
    client: Annotated[Client, typer.Option(help="hxp: aiohttp, never retries")] = Client.HXP,
    no_retries: Annotated[
        bool, typer.Option("--no-retries", help="openai client with max_retries=0")
    ] = False,
    stream: Annotated[bool, typer.Option("--stream", help="stream chat answers (SSE)")] = False,
    max_tokens: Annotated[int, typer.Option(min=1)] = DEFAULT_MAX_TOKENS,
    timeout: Annotated[
        float, typer.Option(min=0.001, help="seconds one request may take")
    ] = DEFAULT_TIMEOUT_S,
    as_json: Annotated[
        bool, typer.Option(JSON_FLAG, help="print the report as one JSON object")
    ] = False,
) -> None:
    """Send bounded load through the router; report ok/failed by cause, latency, backends.

    Stops at --requests or --duration, whichever comes first. Exit 0 when no request failed,
    1 otherwise. --json prints the report object itself; usage errors are the hxp.cli/1 envelope.
    """
    import asyncio  # noqa: PLC0415 - only this command runs an event loop

    from hxp_runtime.loadtest import LoadSpec, human_report, run_load, summarise  # noqa: PLC0415

    report = Report("loadtest", as_json)
    if not url.startswith(("http://", "https://")):
        problem = "give the router's base URL as http://HOST:PORT or https://HOST:PORT"
        report.fail([CliProblem(Kind.USAGE, problem, "URL", url)], EXIT_USAGE)
    if ca is not None and not url.startswith("https://"):
        problem = "--ca verifies an https:// router; give the URL as https://HOST:PORT"
        report.fail([CliProblem(Kind.USAGE, problem, "URL", url)], EXIT_USAGE)
    spec = LoadSpec(
        url=url,
        key=read_key_file(report, key_file),
        models=list(dict.fromkeys([*models, *(embeddings_models or [])])),
        embeddings_models=frozenset(embeddings_models or []),
        concurrency=concurrency,
        requests=requests,
        duration_s=DEFAULT_DURATION_S if requests is None and duration is None else duration,
        client=client,
        retries=not no_retries,
        stream=stream,
        max_tokens=max_tokens,
        timeout_s=timeout,
        ca_file=ca,
    )
    try:
        spec.tls_context()
    except (OSError, ssl.SSLError) as exc:
        problem = (
            f"cannot load the CA certificate: {getattr(exc, 'strerror', None) or exc}; "
            "give a PEM file with the CA that issued the router's certificate"
        )
        report.fail([CliProblem(Kind.USAGE, problem, "--ca", str(ca))], EXIT_USAGE)
    result = summarise(asyncio.run(run_load(spec)))
    if as_json:
        print_json(result)
    else:
        out.print(human_report(result), highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_FAILED if result["sent"] != result["ok"] else EXIT_OK)


@app.command()
def status(
    file: ConfigFile,
    extra_inventory: Annotated[
        list[Path] | None,
        typer.Option("--inventory", help="another inventory with SSH settings (as for deploy)"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show every host, unit, model, router backend and firing alert; exit 1 when degraded.

    One SSH connection per host, all at once, with the SSH settings deploy uses (the lab's
    inventory is merged in for a config with a `lab:` section). status.expected in hxp.yml
    declares what is knowingly off.
    """
    from hxp_runtime.status.survey import survey  # noqa: PLC0415 - only this command needs it
    from hxp_runtime.status.targets import SecretUnavailable  # noqa: PLC0415 - as above

    report = report_for("status", file, as_json)
    cfg = load_or_exit(report, file)
    inventories = list(extra_inventory or [])
    lab = None if cfg.lab is None else lab_inventory(report, file)
    if lab is not None and lab.is_file():
        inventories.insert(0, lab)
    missing = [p for p in inventories if not p.is_file()]
    if missing:
        problem = "inventory not found; check --inventory"
        report.fail(
            [CliProblem(Kind.USAGE, problem, "--inventory", str(p)) for p in missing], EXIT_USAGE
        )
    try:
        verdict, seconds = survey(cfg, inventories)
    except SecretUnavailable as exc:
        problem = f"cannot read a secret status needs: {exc}"
        report.fail([CliProblem(Kind.CONFIG, problem, "(secret)")], EXIT_USAGE)
    if not as_json:
        print_status(verdict.as_json(), seconds)
    result = {**verdict.as_json(), "seconds": seconds}
    if not verdict.healthy:
        report.fail(
            [CliProblem(Kind.STATUS, line, "(deployment)") for line in verdict.degraded],
            EXIT_FAILED,
            human=f"[bold red]degraded[/] ({len(verdict.degraded)} reasons above)",
            result=result,
        )
    if as_json:
        report.succeed(result)
        return
    out.print(f"[green]healthy[/] ({seconds:.2f} s)", highlight=False)


def print_status(view: dict[str, Any], seconds: float) -> None:
    from hxp_runtime.status.verdict import when  # noqa: PLC0415 - only `hxp status` needs it

    console = table_console()
    units = plan_table(
        "Units", dict.fromkeys(("host", "unit", "active", "since", "restarts"), "left")
    )
    models = plan_table(
        "Models", dict.fromkeys(("model", "backend", "host", "ready", "served", "root"), "left")
    )
    for host in view["hosts"]:
        if not host["reachable"]:
            units.add_row(host["name"], "-", f"unreachable: {host['error']}", "-", "-")
            continue
        for unit in host["units"]:
            units.add_row(
                host["name"],
                unit["unit"],
                f"{unit.get('active')} ({unit.get('sub')})",
                when(unit.get("since")),
                str(unit.get("restarts")),
            )
        for model in host["models"]:
            models.add_row(
                model["model"],
                model["backend"],
                host["name"],
                "ready" if model["ready"] else str(model["problem"]),
                ", ".join(str(s["id"]) for s in model["served"]),
                ", ".join(str(s["root"]) for s in model["served"]),
            )
    console.print(units)
    console.print(models)
    if view["backends"] is not None:
        backends = plan_table(
            "Router backends",
            dict.fromkeys(
                ("backend", "healthy", "breaker", "in flight", "EWMA ms", "draining"), "left"
            ),
        )
        for name, state in view["backends"].items():
            backends.add_row(
                name,
                str(state.get("healthy")),
                str(state.get("breaker")),
                str(state.get("in_flight")),
                str(state.get("latency_ms")),
                str(state.get("draining")),
            )
        console.print(backends)
    for line in view["expected"]:
        console.print(f"[dim]expected:[/] {escape(line)}", highlight=False)
    for line in view["degraded"]:
        console.print(f"[red]degraded:[/] {escape(line)}", highlight=False)
    console.print(f"surveyed in {seconds:.2f} s", highlight=False)


# typer vendors click privately (typer._click): its errors are caught as the public
# typer.TyperException and read through click's documented attributes (ctx, param, option_name).


def usage_problem(exc: typer.TyperException) -> CliProblem:
    """click's complaint about the command line, with the parameter it is about."""
    option = getattr(exc, "option_name", None)  # an unknown option
    param = getattr(exc, "param", None)  # a missing or bad argument or option: --out, file
    field = option or (param.opts[0] if param is not None else "(command line)")
    return CliProblem(Kind.USAGE, exc.format_message(), str(field))


def command_path(ctx: Any) -> str | None:
    """``bundle verify`` for the context of `hxp bundle verify`; None for `hxp` itself."""
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    return " ".join(names) or None


def main(argv: list[str] | None = None) -> int:
    """Run `hxp`; a usage error exits 2, as the envelope when --json is on the command line.

    click reports usage errors before a command runs, so no command can: click runs with
    ``standalone_mode=False`` and its errors are turned into output here.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args, standalone_mode=False)
    except typer.TyperException as exc:
        # typer's rich formatting of errors loads slowly; a run without an error needs none.
        from typer import rich_utils  # noqa: PLC0415

        if JSON_FLAG in args:
            command = command_path(getattr(exc, "ctx", None))
            print_json(envelope(command, None, exc.exit_code, None, [usage_problem(exc)]))
        else:
            rich_utils.rich_format_error(exc)  # type: ignore[arg-type]
        return exc.exit_code
    except typer.Abort:
        from typer import rich_utils  # noqa: PLC0415 - as above

        rich_utils.rich_abort_error()
        return EXIT_FAILED
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
