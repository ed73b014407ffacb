"""A test double of libnvidia-ml (NVML), for the machines without an NVIDIA GPU.

It replaces only the C library underneath the real ``pynvml`` module: the double's functions
have the C library's names and take the ctypes arguments pynvml passes (buffers, ``byref``
pointers to pynvml's own structures such as ``c_nvmlMemory_t``), and return NVML status codes.
So every call a test makes goes through pynvml's real Python functions, argument conversion,
structure types and error classes; only the numbers are made up.

    with fake_nvml([FakeGpu(name="NVIDIA H100 80GB HBM3", memory_total=80 * 2**30)]):
        pynvml.nvmlInit()  # real pynvml, answered by the double
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pynvml


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    memory_total: int = 85_520_809_984
    memory_used: int = 1_048_576
    utilization_gpu: int = 0
    temperature_c: int = 35
    power_mw: int = 70_000
    power_limit_mw: int = 700_000
    # C function names that answer NVML_ERROR_NOT_SUPPORTED for this GPU.
    unsupported: set[str] = field(default_factory=set)


@dataclass
class FakeNvmlLibrary:
    """Stands in for ``CDLL("libnvidia-ml.so.1")``: attribute lookup yields C functions."""

    gpus: list[FakeGpu]
    driver_version: str = "550.54.15"
    cuda_version: int = 12040
    init_error: int = pynvml.NVML_SUCCESS
    calls: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Callable[..., int]:
        implementation = getattr(type(self), f"c_{name}", None)
        if implementation is None:
            raise AttributeError(name)  # pynvml turns this into NVMLError_FunctionNotFound

        def c_function(*args: Any) -> int:
            self.calls.append(name)
            return int(implementation(self, *args))

        return c_function

    # ---- helpers: reading pynvml's ctypes arguments the way the C library would
    def _gpu(self, handle: Any, function: str) -> FakeGpu | int:
        index = ctypes.cast(handle, ctypes.c_void_p).value
        if index is None or not 1 <= index <= len(self.gpus):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        gpu = self.gpus[index - 1]
        return pynvml.NVML_ERROR_NOT_SUPPORTED if function in gpu.unsupported else gpu

    @staticmethod
    def _write_string(buffer: Any, size: Any, text: str) -> int:
        data = text.encode()
        if len(data) + 1 > size.value:
            return pynvml.NVML_ERROR_INSUFFICIENT_SIZE
        buffer.value = data
        return pynvml.NVML_SUCCESS

    # ---- the C functions pynvml calls
    def c_nvmlInitWithFlags(self, flags: int) -> int:
        return self.init_error

    def c_nvmlShutdown(self) -> int:
        return pynvml.NVML_SUCCESS

    def c_nvmlSystemGetDriverVersion(self, buffer: Any, size: Any) -> int:
        return self._write_string(buffer, size, self.driver_version)

    def c_nvmlSystemGetCudaDriverVersion(self, version: Any) -> int:
        version._obj.value = self.cuda_version
        return pynvml.NVML_SUCCESS

    def c_nvmlDeviceGetCount_v2(self, count: Any) -> int:
        count._obj.value = len(self.gpus)
        return pynvml.NVML_SUCCESS

    def c_nvmlDeviceGetHandleByIndex_v2(self, index: Any, device: Any) -> int:
        if not 0 <= index.value < len(self.gpus):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        # A handle is an opaque pointer: this one carries index + 1.
        pointer = ctypes.c_void_p(index.value + 1)
        ctypes.memmove(ctypes.addressof(device._obj), ctypes.addressof(pointer), 8)
        return pynvml.NVML_SUCCESS

    def c_nvmlDeviceGetName(self, handle: Any, buffer: Any, size: Any) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetName")
        return gpu if isinstance(gpu, int) else self._write_string(buffer, size, gpu.name)

    def c_nvmlDeviceGetUUID(self, handle: Any, buffer: Any, size: Any) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetUUID")
        return gpu if isinstance(gpu, int) else self._write_string(buffer, size, gpu.uuid)

    def c_nvmlDeviceGetMemoryInfo(self, handle: Any, memory: Any) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        if isinstance(gpu, int):
            return gpu
        memory._obj.total = gpu.memory_total
        memory._obj.used = gpu.memory_used
        memory._obj.free = gpu.memory_total - gpu.memory_used
        return pynvml.NVML_SUCCESS

    def c_nvmlDeviceGetUtilizationRates(self, handle: Any, utilization: Any) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        if isinstance(gpu, int):
            return gpu
        utilization._obj.gpu = gpu.utilization_gpu
        utilization._obj.memory = 0
        return pynvml.NVML_SUCCESS

    def c_nvmlDeviceGetTemperature(self, handle: Any, sensor: Any, temperature: Any) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTemperature")
        if isinstance(gpu, int):
            return gpu
        temperature._obj.value = gpu.temperature_c
        return pynvml.NVML_SUCCESS

    def c_nvmlDeviceGetPowerUsage(self, handle: Any, power: Any) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetPowerUsage")
        if isinstance(gpu, int):
            return gpu
        power._obj.value = gpu.power_mw
        return pynvml.NVML_SUCCESS

    def c_nvmlDeviceGetEnforcedPowerLimit(self, handle: Any, limit: Any) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit")
        if isinstance(gpu, int):
            return gpu
        limit._obj.value = gpu.power_limit_mw
        return pynvml.NVML_SUCCESS


@contextmanager
def fake_nvml(gpus: list[FakeGpu], **settings: Any) -> Iterator[FakeNvmlLibrary]:
    """Install the double as pynvml's loaded library; restore pynvml's state afterwards."""
    library = FakeNvmlLibrary(gpus, **settings)
    saved = pynvml.nvmlLib, dict(pynvml._nvmlGetFunctionPointer_cache)
    pynvml.nvmlLib = library
    pynvml._nvmlGetFunctionPointer_cache.clear()
    try:
        yield library
    finally:
        pynvml.nvmlLib = saved[0]
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlGetFunctionPointer_cache.update(saved[1])
