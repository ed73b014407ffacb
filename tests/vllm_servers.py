"""Real vLLM servers on loopback for integration tests: tiny models, CPU, no mocks.

The servers are real ``vllm serve`` processes from the vLLM CPU venv (``.venv-vllm``, built by
``scripts/setup``) serving the tiny random models of ``hxp_runtime.tinymodel``. Each one takes
about 25 s to become ready and ~1.9 GiB of memory, so start only what a test needs and share
servers across a module or the session.

Fixtures (registered by ``tests/conftest.py``):

``vllm_python``
    Path of the venv's python; skips the test (with the reason) when the venv is missing.
``tiny_models``
    Directory holding the tiny models (``mixtral``, ``hermes``, ``openchat``, ``phi3``) and the
    embeddings model (``all-minilm-l6-v2``), generated once into ``.cache/models``.
``vllm_servers``
    Session-wide factory. ``vllm_servers(ServerSpec("mixtral"), ServerSpec("phi3",
    max_num_seqs=2))`` starts the servers that are not running yet (in parallel), waits until
    each is ready (``hxp_runtime.host.vllm_ready``) and returns them in order. A server is keyed by
    its spec, so asking again with an equal spec returns the same running server. All of them
    stop at the end of the session.

Without the fixtures (a script, a benchmark)::

    with running_servers([ServerSpec("mixtral")], models_dir=..., python=...) as servers:
        print(servers[0].base_url)

``VllmServer.stop()`` / ``.start()`` let a test kill a backend and bring it back (failover
tests); a stopped server's process group is gone when ``stop()`` returns. Logs go to
``VllmServer.log_path`` and their tail is shown when a server does not become ready.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hxp_runtime.host.vllm_ready import NotReady, Task, wait_ready
from hxp_runtime.labmodels import DEFAULT_MODELS_DIR, generate_models
from hxp_runtime.labmodels import vllm_python as vllm_python_path
from tests.dataplane import free_port

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = vllm_python_path()
MODELS_DIR = REPO / DEFAULT_MODELS_DIR
# The tiny models `hxp lab model` generates (hxp_runtime.tinymodel.TINY_MODEL_NAMES).
LAB_MODELS = ("mixtral", "hermes", "openchat", "phi3")
EMBEDDINGS_MODEL = "all-minilm-l6-v2"
# A server starts in 15-70 s alone. In CI the vLLM tests run beside the stack's deployment, whose
# start waves bring up five model servers in the lab's hosts on the same two cores: once, a
# server the router's tests started there had not loaded its worker after 300 s.
READY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0


def server_environment(host: str) -> dict[str, str]:
    """What a vLLM CPU server needs: offline, no telemetry, bound to the address it serves."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_TARGET_DEVICE": "cpu",
        # Without it the engine picked a non-loopback interface for its internal sockets.
        "VLLM_HOST_IP": host,
        "PYTHONPATH": str(REPO),
    }


@dataclass(frozen=True)
class ServerSpec:
    """One server: which tiny model, under which name, with which engine limits.

    ``model`` is a directory name under the models directory. ``port`` 0 picks a free port.
    ``max_num_seqs`` small (e.g. 2) makes requests queue, which drives
    ``vllm:num_requests_waiting`` up (load-aware routing tests).
    """

    model: str
    served_name: str | None = None
    port: int = 0
    max_num_seqs: int = 16
    max_model_len: int = 256
    task: Task = "generate"
    api_key: str | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.served_name or self.model


def embeddings_spec(served_name: str = EMBEDDINGS_MODEL, port: int = 0) -> ServerSpec:
    return ServerSpec(EMBEDDINGS_MODEL, served_name=served_name, port=port, task="embed")


@dataclass
class VllmServer:
    spec: ServerSpec
    port: int
    models_dir: Path
    python: Path
    log_path: Path
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def on_free_port(
        cls, spec: ServerSpec, models_dir: Path, python: Path, log_path: Path
    ) -> VllmServer:
        """A server for ``spec`` on its port, or on a free loopback port when it names none."""
        return cls(spec, spec.port or free_port(), models_dir, python, log_path)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        spec = self.spec
        args = [
            str(self.python),
            "-m",
            "hxp_runtime.host.vllm_launcher",
            "serve",
            str(self.models_dir / spec.model),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--served-model-name",
            spec.name,
            "--max-model-len",
            str(spec.max_model_len),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-num-seqs",
            str(spec.max_num_seqs),
            # A fixed KV cache size; without it the CPU backend reserves a fraction of RAM.
            "--kv-cache-memory-bytes",
            "256M",
        ]
        if spec.task == "embed":
            args += ["--runner", "pooling"]
        if spec.api_key:
            args += ["--api-key", spec.api_key]
        return args + list(spec.extra_args)

    def start(self) -> None:
        """Start the process (in its own process group); does not wait for readiness."""
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_environment(self.host),
                cwd=REPO,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Block until ready; return seconds waited. Raises RuntimeError with the log tail."""
        try:
            return wait_ready(
                self.base_url,
                self.spec.name,
                task=self.spec.task,
                api_key=self.spec.api_key,
                timeout=timeout,
                alive=lambda: self.running,
            )
        except NotReady as problem:
            raise RuntimeError(
                f"vLLM server {self.spec.name} on port {self.port}: {problem}\n"
                f"last lines of {self.log_path}:\n{self.log_tail()}"
            ) from None

    def stop(self) -> None:
        """Terminate the whole process group (API server, engine core, workers) and wait."""
        if self.process is None:
            return
        pgid = self.process.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            if wait_group_gone(pgid, STOP_TIMEOUT_S):
                break
        self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        # The group leader is our child: reap it so it does not linger as a zombie member.
        with suppress(ChildProcessError):
            os.waitpid(pgid, os.WNOHANG)
        time.sleep(0.2)
    return False


def start_all(servers: Sequence[VllmServer], timeout: float = READY_TIMEOUT_S) -> None:
    """Start every server at once, then wait for each; stop them all if one fails."""
    for server in servers:
        server.start()
    try:
        for server in servers:
            server.wait_ready(timeout)
    except BaseException:
        for server in servers:
            server.stop()
        raise


@contextmanager
def running_servers(
    specs: Sequence[ServerSpec],
    *,
    models_dir: Path = MODELS_DIR,
    python: Path = VLLM_PYTHON,
    log_dir: Path | None = None,
) -> Iterator[list[VllmServer]]:
    logs = log_dir or Path(tempfile.mkdtemp(prefix="vllm-logs-"))
    servers = [
        VllmServer.on_free_port(spec, models_dir, python, logs / f"{spec.name}-{index}.log")
        for index, spec in enumerate(specs)
    ]
    start_all(servers)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    if not VLLM_PYTHON.exists():
        pytest.skip(f"the vLLM CPU venv is missing ({VLLM_PYTHON}): run scripts/setup")
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def tiny_models(vllm_python: Path) -> Path:
    result = generate_models(MODELS_DIR, python=vllm_python)
    if result.returncode != 0:
        raise RuntimeError(f"generating tiny models failed:\n{result.stderr[-3000:]}")
    return MODELS_DIR


@pytest.fixture(scope="session")
def vllm_servers(
    vllm_python: Path, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., list[VllmServer]]]:
    log_dir = tmp_path_factory.mktemp("vllm-logs")
    started: dict[ServerSpec, VllmServer] = {}

    def factory(*specs: ServerSpec) -> list[VllmServer]:
        new = [
            VllmServer.on_free_port(
                spec, tiny_models, vllm_python, log_dir / f"{spec.name}-{len(started) + index}.log"
            )
            for index, spec in enumerate(specs)
            if spec not in started
        ]
        start_all(new)
        started.update((server.spec, server) for server in new)
        for spec in specs:  # a test may have stopped a shared server: bring it back
            if not started[spec].running:
                started[spec].start()
                started[spec].wait_ready()
        return [started[spec] for spec in specs]

    yield factory
    for server in started.values():
        server.stop()
    print(f"vLLM server logs: {log_dir}", file=sys.stderr)
