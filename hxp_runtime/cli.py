"""The `hxp` command line.

Exit codes: 0 success, 1 the configuration (or what it describes) is invalid, 2 usage error
(unknown option, missing argument, a file that does not exist).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hxp_runtime.bundle_cli import bundle_app
from hxp_runtime.config import ConfigError, HxpConfig, load_config
from hxp_runtime.lab_cli import lab_app
from hxp_runtime.labmodels import model as lab_model
from hxp_runtime.planner import Plan, plan_deployment
from hxp_runtime.render import render_inventory
from hxp_runtime.router.keys_cli import keys_app

EXIT_INVALID = 1
EXIT_USAGE = 2

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

ConfigFile = Annotated[Path, typer.Argument(help="the deployment file (hxp.yml)")]
JsonFlag = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]


def load_or_exit(file: Path, *, as_json: bool = False) -> HxpConfig:
    """Load ``file``; on failure print every problem and exit (2: missing file, 1: invalid)."""
    if not file.exists():
        _fail(as_json, file, [f"{file}: file not found; check the path"], EXIT_USAGE)
    try:
        return load_config(file)
    except ConfigError as exc:
        if as_json:
            _fail(as_json, file, [_problem_json(file, p) for p in exc.errors], EXIT_INVALID)
        err.print(f"[bold red]invalid:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID) from None


def _problem_json(file: Path, problem: Any) -> dict[str, Any]:
    return {
        "file": str(file),
        "line": problem.line,
        "field": problem.field,
        "message": problem.message,
    }


def _fail(as_json: bool, file: Path, problems: list[Any], code: int) -> None:
    if as_json:
        print(json.dumps({"file": str(file), "valid": False, "problems": problems}, indent=2))
    else:
        for problem in problems:
            err.print(
                f"[bold red]error:[/] {escape(str(problem))}", highlight=False, soft_wrap=True
            )
    raise typer.Exit(code)


@app.command()
def validate(file: ConfigFile, as_json: JsonFlag = False) -> None:
    """Check hxp.yml: types, cross-references, ports, secrets and GPU fit."""
    cfg = load_or_exit(file, as_json=as_json)
    if as_json:
        print(json.dumps({"file": str(file), "valid": True, "problems": []}, indent=2))
        return
    out.print(
        f"[green]valid:[/] {file}: deployment {cfg.name!r}, {len(cfg.hosts)} hosts, "
        f"{len(cfg.models)} models",
        highlight=False,
    )


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "instances": [
            {
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
            }
            for i in plan.instances
        ],
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


@app.command()
def plan(file: ConfigFile, as_json: JsonFlag = False) -> None:
    """Show where each model runs: GPUs, tensor parallelism, memory, start order."""
    cfg = load_or_exit(file, as_json=as_json)
    result = plan_deployment(cfg)
    if as_json:
        print(json.dumps(plan_json(result), indent=2))
        return
    table = Table(title=f"GPU plan for {cfg.name}", header_style="bold")
    for column in (
        "model",
        "host",
        "GPUs",
        "TP",
        "weights GB",
        "KV GB",
        "need/GPU GB",
        "gpu_mem_util",
        "headroom GB",
        "start",
    ):
        table.add_column(column, justify="left" if column in {"model", "host", "GPUs"} else "right")
    for i in result.instances:
        table.add_row(
            i.model,
            i.host,
            ",".join(map(str, i.gpu_ids)) if i.gpu_ids else "cpu",
            str(i.tensor_parallel_size),
            f"{i.weights_gib:.1f}",
            f"{i.kv_gib:.1f}",
            f"{i.need_per_gpu_gib:.1f}" if i.device == "cuda" else "-",
            f"{i.gpu_memory_utilization:.3f}" if i.gpu_memory_utilization else "-",
            f"{i.headroom_gib:.1f}" if i.headroom_gib is not None else "-",
            str(i.start_order),
        )
    out.print(table)
    if result.gpus:
        gpus = Table(title="GPUs", header_style="bold")
        for column in ("host", "GPU", "memory GB", "planned GB", "util sum", "models"):
            gpus.add_column(column)
        for g in result.gpus:
            gpus.add_row(
                g.host,
                f"{g.index} {g.name}",
                f"{g.memory_gib:.0f}",
                f"{g.planned_gib:.1f}",
                f"{g.utilization_sum:.3f}",
                ", ".join(g.tenants),
            )
        out.print(gpus)
    out.print(
        "sizes in GiB; KV = worst case (max_model_len x max_num_seqs); "
        "headroom = room vLLM gets beyond the planned need"
    )


def write_inventory_or_exit(cfg: HxpConfig, out_dir: Path, source: Path) -> list[Path]:
    try:
        return render_inventory(cfg, plan_deployment(cfg), out_dir, source)
    except OSError as exc:
        err.print(
            f"[bold red]error:[/] cannot write the inventory into {out_dir}: {exc.strerror} "
            f"({exc.filename}); choose a writable directory with --out",
            highlight=False,
        )
        raise typer.Exit(EXIT_INVALID) from None


@app.command()
def render(
    file: ConfigFile,
    out_dir: Annotated[Path, typer.Option("--out", help="inventory directory to write")],
    as_json: JsonFlag = False,
) -> None:
    """Write the Ansible inventory (hosts, group_vars, host_vars) the playbooks run on."""
    cfg = load_or_exit(file, as_json=as_json)
    written = write_inventory_or_exit(cfg, out_dir, file)
    if as_json:
        print(json.dumps({"inventory": str(out_dir), "files": [str(p) for p in written]}, indent=2))
        return
    out.print(f"[green]rendered[/] {len(written)} files into {out_dir}", highlight=False)


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
) -> None:
    """Render the inventory and run the playbooks (ansible-runner) against it.

    For a config with a `lab:` section whose lab is up, the lab's inventory (SSH key, proxy)
    is merged in automatically.
    """
    from hxp_runtime.deploy import run_playbook  # noqa: PLC0415 - ansible-runner loads slowly
    from hxp_runtime.lab import load_lab  # noqa: PLC0415

    cfg = load_or_exit(file)
    state = Path(".hxp") / cfg.name
    inventory = inventory_dir or state / "inventory"
    write_inventory_or_exit(cfg, inventory, file)
    out.print(f"inventory rendered into {inventory}", highlight=False)
    inventories = [inventory / "hosts.yml", *(extra_inventory or [])]
    if cfg.lab is not None:
        lab_inventory = load_lab(file).inventory_file
        if lab_inventory.is_file():
            out.print(f"merging the lab's inventory {lab_inventory}", highlight=False)
            inventories.append(lab_inventory)
    missing = [p for p in inventories if not p.is_file()]
    if missing:
        _fail(
            False,
            file,
            [f"{p}: inventory not found; check --inventory" for p in missing],
            EXIT_USAGE,
        )
    rc, progress = run_playbook(
        inventories,
        playbook=playbook,
        state_dir=state / "runner",
        check=check,
        limit=limit,
        tags=tags,
        console=out,
    )
    if rc:
        err.print(f"[bold red]deploy failed[/] ({len(progress.failures)} failed tasks)")
        raise typer.Exit(EXIT_INVALID)
    changed = sum(counts["changed"] for counts in progress.counts.values())
    if expect_no_changes and changed:
        err.print(f"[bold red]not idempotent:[/] {changed} tasks changed something:")
        for line in progress.changes:
            err.print(f"  {line}", highlight=False)
        raise typer.Exit(EXIT_INVALID)
    out.print("[green]deploy finished[/]")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
