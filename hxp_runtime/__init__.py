"""hxp: deploy a self-hosted, multi-model LLM serving stack onto bare-metal Linux hosts."""

from importlib.metadata import PackageNotFoundError, version

# pyproject.toml holds the version; the installed distribution's metadata carries it here.
try:
    __version__ = version("hxp")
except PackageNotFoundError:
    # A checkout imported without being installed: the vLLM venv runs hxp_runtime.tinymodel and
    # the host programs from the repository this way, and none of them reports a version.
    __version__ = "0+unknown"
