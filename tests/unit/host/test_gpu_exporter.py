"""The GPU exporter against pynvml's real API: the NVML C library is a double (no GPU here)."""

from __future__ import annotations

import pynvml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hxp_runtime.host.gpu_exporter import NvmlCollector
from tests.nvml_double import FakeGpu, fake_nvml


def scrape(collector: NvmlCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


H100 = FakeGpu(
    name="NVIDIA H100 80GB HBM3",
    uuid="GPU-11111111-2222-3333-4444-555555555555",
    memory_total=85_520_809_984,
    memory_used=60 * 2**30,
    utilization_gpu=87,
    temperature_c=64,
    power_mw=512_345,
    power_limit_mw=700_000,
)
L4_NO_POWER = FakeGpu(
    name="NVIDIA L4",
    uuid="GPU-66666666-7777-8888-9999-000000000000",
    memory_total=24 * 2**30,
    unsupported={"nvmlDeviceGetPowerUsage", "nvmlDeviceGetEnforcedPowerLimit"},
)


def test_every_gpu_reading_is_exported_per_gpu() -> None:
    with fake_nvml([H100, L4_NO_POWER]):
        collector = NvmlCollector(pynvml)
        samples = scrape(collector)
        collector.shutdown()
    gpu0 = (("gpu", "0"),)
    assert samples[("hxp_gpu_nvml_up", ())] == 1.0
    assert samples[("hxp_gpu_utilization_ratio", gpu0)] == 0.87
    assert samples[("hxp_gpu_memory_used_bytes", gpu0)] == 60 * 2**30
    assert samples[("hxp_gpu_memory_total_bytes", gpu0)] == 85_520_809_984
    assert samples[("hxp_gpu_temperature_celsius", gpu0)] == 64
    assert samples[("hxp_gpu_power_watts", gpu0)] == 512.345
    assert samples[("hxp_gpu_power_limit_watts", gpu0)] == 700.0
    info = {
        dict(labels)["gpu"]: dict(labels)
        for (name, labels), _ in samples.items()
        if name == "hxp_gpu_info"
    }
    assert info["0"]["name"] == "NVIDIA H100 80GB HBM3"
    assert info["1"]["uuid"] == "GPU-66666666-7777-8888-9999-000000000000"
    assert info["0"]["driver_version"] == "550.54.15"
    assert info["0"]["cuda_version"] == "12.4"


def test_a_reading_the_gpu_does_not_support_is_left_out() -> None:
    with fake_nvml([H100, L4_NO_POWER]):
        collector = NvmlCollector(pynvml)
        samples = scrape(collector)
        collector.shutdown()
    assert ("hxp_gpu_power_watts", (("gpu", "0"),)) in samples
    assert ("hxp_gpu_power_watts", (("gpu", "1"),)) not in samples
    assert samples[("hxp_gpu_memory_total_bytes", (("gpu", "1"),))] == 24 * 2**30


def test_no_nvidia_driver_exports_up_zero() -> None:
    # No double: this machine has no NVIDIA driver, so this is pynvml's real failure.
    samples = scrape(NvmlCollector(pynvml))
    assert samples == {("hxp_gpu_nvml_up", ()): 0.0}


def test_driver_failing_at_init_is_retried_on_the_next_scrape() -> None:
    with fake_nvml([H100], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED) as library:
        collector = NvmlCollector(pynvml)
        assert scrape(collector) == {("hxp_gpu_nvml_up", ()): 0.0}
        library.init_error = pynvml.NVML_SUCCESS
        assert scrape(collector)[("hxp_gpu_nvml_up", ())] == 1.0
        collector.shutdown()
    assert library.calls.count("nvmlInitWithFlags") == 2
    assert library.calls[-1] == "nvmlShutdown"
