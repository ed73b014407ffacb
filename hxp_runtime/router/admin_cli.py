"""``hxp-router admin``: the admin API from a shell or a script, on this machine.

    hxp-router admin [--settings FILE] [--secrets FILE] backends
    hxp-router admin ... drain NAME [--deadline-s N]
    hxp-router admin ... undrain NAME
    hxp-router admin ... switch NAME URL

``switch`` is a blue-green swap's: it records that backend NAME serves on URL from now on
(beside the settings file, see :func:`hxp_runtime.router.settings.backend_urls_file`); the
router takes it on its next reload (``systemctl reload hxp-router``), each request on the old
URL or the new one.

The port comes from the settings file, the key from the secrets file (never from the command
line, where ``ps`` would show it). The answer is printed as JSON; the exit status is 0 when
the call succeeded (for a drain: the backend is drained), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from hxp_runtime.router.settings import (
    ADMIN_HOST,
    DEFAULT_SECRETS,
    DEFAULT_SETTINGS,
    SettingsError,
    load_secrets,
    load_settings,
    write_backend_url,
)

EXIT_FAILED = 1


class AdminError(Exception):
    """The admin API could not be called, or refused the call."""


def call_admin(
    settings_file: Path,
    secrets_file: Path,
    method: str,
    path: str,
    query: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, dict[str, Any]]:
    """(status, JSON answer) of one admin API call, with the key from ``secrets_file``."""
    settings, secrets = load_settings(settings_file), load_secrets(secrets_file)
    if secrets.admin_key is None:
        raise AdminError(f"{secrets_file}: no admin_key, so the router runs no admin API")
    url = f"http://{ADMIN_HOST}:{settings.admin_port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(  # noqa: S310 - always http:// on loopback
        url,
        method=method,
        headers={"Authorization": f"Bearer {secrets.admin_key.get_secret_value()}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - as above
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, {"error": body.decode(errors="replace")}
    except OSError as exc:
        raise AdminError(f"the admin API at {url} did not answer: {exc}") from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hxp-router admin", description=__doc__.split("\n")[0])
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS)
    parser.add_argument("--secrets", type=Path, default=DEFAULT_SECRETS)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backends", help="every backend's live state over all workers")
    drain = commands.add_parser("drain", help="route no new requests to a backend")
    drain.add_argument("name")
    drain.add_argument(
        "--deadline-s", type=float, default=30.0, help="longest wait for requests in flight"
    )
    undrain = commands.add_parser("undrain", help="route requests to a drained backend again")
    undrain.add_argument("name")
    switch = commands.add_parser("switch", help="move a backend to another URL on next reload")
    switch.add_argument("name")
    switch.add_argument("url", help="http://host:port of the server to route to instead")
    return parser.parse_args(argv)


def switch(args: argparse.Namespace) -> int:
    try:
        written = write_backend_url(args.settings, args.name, args.url)
    except SettingsError as exc:
        print(f"invalid: {exc.render()}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, OSError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps({"backend": args.name, "url": args.url, "file": str(written)}))
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.command == "switch":
        return switch(args)
    query: dict[str, str] | None = None
    if args.command == "backends":
        method, path = "GET", "/admin/backends"
    else:
        method, path = "POST", f"/admin/backends/{urllib.parse.quote(args.name)}/{args.command}"
        if args.command == "drain":
            query = {"deadline_s": str(args.deadline_s)}
    waits_s = args.deadline_s if args.command == "drain" else 0.0
    try:
        status, answer = call_admin(
            args.settings, args.secrets, method, path, query, timeout_s=waits_s + 30
        )
    except SettingsError as exc:
        print(f"invalid: {exc.render()}", file=sys.stderr)
        return EXIT_FAILED
    except AdminError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(answer, indent=2, sort_keys=True))
    succeeded = status == 200 and answer.get("drained", True) is not False
    return 0 if succeeded else EXIT_FAILED
