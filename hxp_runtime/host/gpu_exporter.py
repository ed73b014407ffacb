"""GPU exporter: per-GPU utilisation, memory, temperature and power from NVML, for Prometheus.

    python -m hxp_runtime.host.gpu_exporter --address 10.0.0.5 --port 9835

Every scrape reads NVML (the NVIDIA driver's management library, through pynvml) afresh: no
background polling, so the numbers are as old as the scrape. Series (label ``gpu`` = the
device index; name, UUID and driver are on ``hxp_gpu_info`` only, to keep series bounded):

    hxp_gpu_nvml_up                       1 when NVML answered this scrape, else 0
    hxp_gpu_info{gpu,uuid,name,driver_version,cuda_version}   1
    hxp_gpu_utilization_ratio{gpu}        share of time a kernel ran (0-1)
    hxp_gpu_memory_used_bytes{gpu}
    hxp_gpu_memory_total_bytes{gpu}
    hxp_gpu_temperature_celsius{gpu}
    hxp_gpu_power_watts{gpu}
    hxp_gpu_power_limit_watts{gpu}

A reading a GPU does not support (NVML_ERROR_NOT_SUPPORTED) is left out for that GPU. On a
host without an NVIDIA driver the exporter still runs and reports ``hxp_gpu_nvml_up 0``: the
driver may come later (NVML is retried on every scrape). Lifecycle: start the HTTP server,
serve until SIGTERM/SIGINT, then stop it and shut NVML down.

The ``vllm`` role copies this one file next to its venv (prometheus-client and nvidia-ml-py are
there) and runs it as the ``hxp-gpu-exporter`` unit.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

# The port when none is given; hxp.yml's metrics.gpu_exporter_port defaults to it as well.
DEFAULT_PORT = 9835


@dataclass(frozen=True)
class Reading:
    """One per-GPU series: its name, help text, and how to read it from a device handle."""

    name: str
    documentation: str
    read: Callable[[ModuleType, Any], float]


READINGS = (
    Reading(
        "hxp_gpu_utilization_ratio",
        "Share of the last sample period during which a kernel ran on the GPU (0-1).",
        lambda nvml, h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0,
    ),
    Reading(
        "hxp_gpu_memory_used_bytes",
        "GPU memory in use, in bytes.",
        lambda nvml, h: float(nvml.nvmlDeviceGetMemoryInfo(h).used),
    ),
    Reading(
        "hxp_gpu_memory_total_bytes",
        "GPU memory installed, in bytes.",
        lambda nvml, h: float(nvml.nvmlDeviceGetMemoryInfo(h).total),
    ),
    Reading(
        "hxp_gpu_temperature_celsius",
        "GPU core temperature, in degrees Celsius.",
        lambda nvml, h: float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
    ),
    Reading(
        "hxp_gpu_power_watts",
        "GPU power draw, in watts.",
        lambda nvml, h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
    ),
    Reading(
        "hxp_gpu_power_limit_watts",
        "GPU power limit the driver enforces, in watts.",
        lambda nvml, h: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
    ),
)


def cuda_version_string(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


class NvmlCollector(Collector):
    """Reads every GPU at scrape time. ``nvml`` is the pynvml module (tests pass it in)."""

    def __init__(self, nvml: ModuleType | None = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self.nvml = nvml
        self.initialised = False

    def _ensure_nvml(self) -> bool:
        if not self.initialised:
            try:
                self.nvml.nvmlInit()
            except self.nvml.NVMLError:
                return False
            self.initialised = True
        return True

    def shutdown(self) -> None:
        if self.initialised:
            self.nvml.nvmlShutdown()
            self.initialised = False

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("hxp_gpu_nvml_up", "1 when NVML answered this scrape, else 0.")
        if not self._ensure_nvml():
            up.add_metric([], 0.0)
            yield up
            return
        nvml = self.nvml
        try:
            driver = nvml.nvmlSystemGetDriverVersion()
            cuda = cuda_version_string(nvml.nvmlSystemGetCudaDriverVersion())
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            info = InfoMetricFamily("hxp_gpu", "The GPU's model, UUID and driver.", labels=["gpu"])
            for index, handle in enumerate(handles):
                info.add_metric(
                    [str(index)],
                    {
                        "uuid": nvml.nvmlDeviceGetUUID(handle),
                        "name": nvml.nvmlDeviceGetName(handle),
                        "driver_version": driver,
                        "cuda_version": cuda,
                    },
                )
        except nvml.NVMLError:
            # The driver went away (unloaded, GPU fell off the bus): start over next scrape.
            self.shutdown()
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield info
        for reading in READINGS:
            family = GaugeMetricFamily(reading.name, reading.documentation, labels=["gpu"])
            for index, handle in enumerate(handles):
                try:
                    family.add_metric([str(index)], reading.read(nvml, handle))
                except nvml.NVMLError:  # NOT_SUPPORTED on this GPU, or a transient failure
                    continue
            yield family


def serve(address: str, port: int, collector: NvmlCollector, stop: threading.Event) -> None:
    """Serve /metrics until ``stop`` is set, then shut the server and NVML down."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, thread = start_http_server(port, addr=address, registry=registry)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        collector.shutdown()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Export per-GPU utilisation, memory, temperature and power (NVML).",
    )
    parser.add_argument("--address", default="127.0.0.1", help="listen address")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        serve(args.address, args.port, NvmlCollector(), stop)
    except OSError as error:
        print(
            f"gpu exporter: cannot listen on {args.address}:{args.port}: {error}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
