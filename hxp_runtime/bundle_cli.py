"""`hxp bundle …`: build an air-gapped artifact bundle and verify it (see hxp_runtime.bundle).

Exit codes as for the rest of `hxp`: 0 success, 1 the spec or the bundle is not usable, 2 usage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hxp_runtime.cli_output import EXIT_FAILED, EXIT_USAGE, JSON_FLAG, CliProblem, Kind, Report
from hxp_runtime.config import ConfigError

bundle_app = typer.Typer(
    help="Air-gapped artifact bundle: wheels, release archives, model directories, Debian "
    "packages, each with its sha256 in manifest.json.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

MIB = float(1 << 20)


def _err(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)


@bundle_app.command()
def build(
    spec: Annotated[Path, typer.Argument(help="the bundle spec (YAML) naming every artifact")],
    out_dir: Annotated[Path, typer.Option("--out", help="new directory to write the bundle to")],
    artifacts: Annotated[
        list[str] | None,
        typer.Option("--artifact", "-a", help="collect only this artifact (repeatable)"),
    ] = None,
) -> None:
    """Collect the artifacts of SPEC into a bundle directory and write its manifest."""
    # Here, not at the top: every `hxp` command loads this module, few build a bundle.
    from hxp_runtime.bundle import BundleError, build_bundle  # noqa: PLC0415

    if not spec.is_file():
        _err(f"{spec}: file not found; check the path")
        raise typer.Exit(EXIT_USAGE)
    try:
        manifest = build_bundle(
            spec, out_dir, log=lambda line: err.print(line, highlight=False), only=artifacts or ()
        )
    except ConfigError as exc:
        err.print(f"[bold red]invalid:[/] {exc.render()}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except BundleError as exc:
        for problem in exc.problems:
            _err(problem)
        raise typer.Exit(EXIT_FAILED) from None
    for a in manifest.artifacts:
        out.print(f"{a.kind.value:<9} {a.name:<32} {a.version:<16} {a.size / MIB:9.1f} MiB")
    total = sum(a.size for a in manifest.artifacts) / MIB
    out.print(
        f"[green]built[/] {out_dir}: {len(manifest.artifacts)} artifacts, {total:.1f} MiB",
        highlight=False,
    )


@bundle_app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="the bundle directory (holds manifest.json)")],
    artifacts: Annotated[
        list[str] | None,
        typer.Option("--artifact", "-a", help="check only this artifact (repeatable)"),
    ] = None,
    optional: Annotated[
        list[str] | None,
        typer.Option("--optional", help="check this artifact if the bundle holds it (repeatable)"),
    ] = None,
    as_json: Annotated[bool, typer.Option(JSON_FLAG, help="print machine-readable JSON")] = False,
) -> None:
    """Check every file of the bundle (or of the named artifacts) against its sha256 and size."""
    from hxp_runtime.bundle import verify_bundle  # noqa: PLC0415 - as in build

    report = Report("bundle verify", as_json, str(bundle))
    result = verify_bundle(bundle, artifacts or [], optional or [])
    if not result.ok:
        report.fail([CliProblem(Kind.BUNDLE, p, "(bundle)") for p in result.problems], EXIT_FAILED)
    if as_json:
        report.succeed(result.to_json())
        return
    total = sum(a.size for a in result.artifacts) / MIB
    out.print(
        f"[green]verified[/] {result.bundle}: {len(result.artifacts)} artifacts, "
        f"{total:.1f} MiB, every sha256 and size as in the manifest",
        highlight=False,
    )
