"""What every `hxp` command reports: one JSON envelope with --json, lines for people without.

With --json, stdout holds exactly one object of the shape ``hxp.cli/1``, for success and for
failure alike, so a script reads one thing whatever happened::

    {"schema": "hxp.cli/1", "command": "plan", "ok": false, "exit_code": 1, "file": "hxp.yml",
     "result": null, "problems": [{"file": "hxp.yml", "line": 12, "field": "models[0].name",
                                   "message": "...", "kind": "config"}]}

README ("Command-line contract") describes it and ``data/cli-output.schema.json`` is its JSON
Schema; the unit tests check every command's output against that schema. Without --json the
same problems go to stderr as ``file:line: message`` lines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from hxp_runtime.config import ConfigError

SCHEMA = "hxp.cli/1"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
JSON_FLAG = "--json"


class Kind(StrEnum):
    """What a problem is about, so a script can tell its own mistakes from the deployment's."""

    USAGE = "usage"  # the command line: unknown option, missing argument, FILE missing or a dir
    CONFIG = "config"  # a file hxp reads is invalid (hxp.yml, a bundle spec, router settings)
    IO = "io"  # a file or directory cannot be written
    BUNDLE = "bundle"  # an artifact is missing from the bundle or differs from its manifest
    LAB = "lab"  # the lab cannot be used: no root, a host that does not start
    DEPLOY = "deploy"  # a playbook task failed, or changed something under --expect-no-changes
    DATABASE = "database"  # PostgreSQL (API keys) is unreachable or refused the operation
    STATUS = "status"  # `hxp status`: something of the deployment is down, not ready or alerting


@dataclass(frozen=True)
class CliProblem:
    """One thing that is wrong. ``field`` is the config field or command-line parameter at
    fault, or the thing at fault in parentheses (``(document)``, ``(lab)``) when there is none."""

    kind: Kind
    message: str
    field: str
    file: str | None = None
    line: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "message": self.message,
            "kind": self.kind.value,
        }

    def human(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}" if where else self.message


def config_problems(exc: ConfigError) -> list[CliProblem]:
    return [CliProblem(Kind.CONFIG, p.message, p.field, str(exc.file), p.line) for p in exc.errors]


def envelope(
    command: str | None,
    file: str | None,
    exit_code: int,
    result: dict[str, Any] | None,
    problems: Sequence[CliProblem],
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "command": command,
        "ok": exit_code == EXIT_OK,
        "exit_code": exit_code,
        "file": file,
        "result": result,
        "problems": [p.as_json() for p in problems],
    }


def print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2))


@dataclass(frozen=True)
class Report:
    """Where one command's outcome goes: the envelope on stdout (``as_json``), or, for people,
    the command's own lines on stdout and its problems on stderr."""

    command: str
    as_json: bool
    file: str | None = None

    def succeed(self, result: dict[str, Any]) -> None:
        """Print the success envelope; a command prints its human output itself instead."""
        print_json(envelope(self.command, self.file, EXIT_OK, result, []))

    def fail(
        self,
        problems: Sequence[CliProblem],
        exit_code: int,
        *,
        human: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Report ``problems`` and exit; ``human`` (rich markup) replaces the per-problem lines;
        ``result``: what the command saw anyway (`hxp status` when degraded)."""
        err = Console(stderr=True)
        if self.as_json:
            print_json(envelope(self.command, self.file, exit_code, result, problems))
        elif human is not None:
            err.print(human, highlight=False, soft_wrap=True)
        else:
            for problem in problems:
                err.print(
                    f"[bold red]error:[/] {escape(problem.human())}",
                    highlight=False,
                    soft_wrap=True,
                )
        raise typer.Exit(exit_code)

    def invalid(self, exc: ConfigError) -> NoReturn:
        """Exit 1 with every problem of a config file (file:line: field: message for people)."""
        self.fail(
            config_problems(exc), EXIT_FAILED, human=f"[bold red]invalid:[/] {escape(exc.render())}"
        )
