#!/usr/bin/python
"""Ansible module hxp_gpu_facts: the host's NVIDIA GPUs (pynvml), checked against the plan."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hxp_gpu_facts
short_description: Gather NVIDIA GPUs with pynvml and check the planned GPU memory against them
description:
  - Reads every GPU through NVML (the C library of the NVIDIA driver) with pynvml
    (nvidia-ml-py): index, name, UUID, total and used memory, driver and CUDA version.
  - On a host without an NVIDIA driver it does not fail; it reports C(hxp_nvml_available=false)
    and the reason, so that the caller decides (the vllm role fails unless hxp.yml says
    C(accelerator: cpu)).
  - With O(required) (the host's planned vLLM instances) it lists every way the plan does not
    fit the GPUs found, in RV(problems).
  - Needs pynvml in the Python that runs it (the vllm role uses its venv's python).
options:
  required:
    description:
      - Planned instances, as C(hxp render) writes them into C(hxp_vllm_instances); the keys
        read are C(name), C(gpu_ids), C(gpu_memory_utilization) and C(planned_gpu_memory_gib).
    type: list
    elements: dict
    default: []
author: hxp
"""

EXAMPLES = r"""
- name: Gather the GPUs and check the plan against them
  hxp_gpu_facts:
    required: "{{ hxp_vllm_instances }}"
  vars:
    ansible_python_interpreter: /opt/hxp/vllm/bin/python
  register: gpus

- name: Show them in hxp.yml's shape (hosts[].gpus)
  ansible.builtin.debug:
    var: gpus.config_gpus
"""

RETURN = r"""
ansible_facts:
  description: C(hxp_nvml_available), C(hxp_nvml_error), C(hxp_nvidia_driver_version),
    C(hxp_cuda_driver_version) and C(hxp_gpus) (index, name, uuid, memory_total_bytes,
    memory_used_bytes, memory_gib).
  returned: always
  type: dict
config_gpus:
  description: The GPUs as hxp.yml declares them under C(hosts[].gpus), for the planner.
  returned: always
  type: list
  sample: [{index: 0, name: NVIDIA H100 80GB HBM3, memory_gb: 79.6}]
problems:
  description: Every way the planned instances do not fit the GPUs found.
  returned: always
  type: list
"""

from typing import Any  # noqa: E402 (Ansible's module layout: documentation first)

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

GIB = float(2**30)


def cuda_version_string(version: int) -> str:
    """NVML's CUDA driver version (e.g. 12040) as CUDA spells it ("12.4")."""
    return f"{version // 1000}.{version % 1000 // 10}"


def read_gpus(nvml: Any) -> dict[str, Any]:
    """The GPUs NVML sees, or why it sees none. ``nvml`` is the pynvml module."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        return {
            "hxp_nvml_available": False,
            "hxp_nvml_error": f"NVML could not start: {error} (no NVIDIA driver loaded?)",
            "hxp_nvidia_driver_version": None,
            "hxp_cuda_driver_version": None,
            "hxp_gpus": [],
        }
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": index,
                    "name": nvml.nvmlDeviceGetName(handle),
                    "uuid": nvml.nvmlDeviceGetUUID(handle),
                    "memory_total_bytes": int(memory.total),
                    "memory_used_bytes": int(memory.used),
                    "memory_gib": round(memory.total / GIB, 1),
                }
            )
        return {
            "hxp_nvml_available": True,
            "hxp_nvml_error": None,
            "hxp_nvidia_driver_version": nvml.nvmlSystemGetDriverVersion(),
            "hxp_cuda_driver_version": cuda_version_string(nvml.nvmlSystemGetCudaDriverVersion()),
            "hxp_gpus": gpus,
        }
    finally:
        nvml.nvmlShutdown()


def config_gpus(gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """hxp.yml's ``hosts[].gpus`` entries (hxp_runtime.config.Gpu) for these GPUs."""
    return [{"index": g["index"], "name": g["name"], "memory_gb": g["memory_gib"]} for g in gpus]


def plan_problems(gpus: list[dict[str, Any]], required: list[dict[str, Any]]) -> list[str]:
    """Every way the planned instances do not fit the GPUs found (empty when they fit).

    Each instance needs ``planned_gpu_memory_gib`` on each of its GPUs and is started with
    ``--gpu-memory-utilization`` u: vLLM takes u x the GPU's memory, so that must hold the
    need; the needs of the instances sharing a GPU must fit its memory together; and so must
    their shares u: vLLM refuses to start an instance when the GPU's free memory is below its
    share, so shares over 1 in all leave the last one to start failing.
    """
    by_index = {g["index"]: g for g in gpus}
    found = ", ".join(f"{g['index']} ({g['name']}, {g['memory_gib']} GiB)" for g in gpus)
    problems: list[str] = []
    load: dict[int, list[tuple[str, float, float | None]]] = {}
    for inst in required:
        need = float(inst.get("planned_gpu_memory_gib") or 0.0)
        utilization = inst.get("gpu_memory_utilization")
        for index in inst.get("gpu_ids") or []:
            gpu = by_index.get(index)
            if gpu is None:
                problems.append(
                    f"model {inst['name']} is planned on GPU {index}, which this host does not "
                    f"have (GPUs found: {found or 'none'}); fix hosts[].gpus in hxp.yml"
                )
                continue
            load.setdefault(index, []).append((inst["name"], need, utilization))
            memory = gpu["memory_total_bytes"] / GIB
            if utilization is not None and need > utilization * memory + 1e-6:
                problems.append(
                    f"model {inst['name']} needs {need:.1f} GiB on GPU {index}, but with "
                    f"gpu_memory_utilization {utilization} vLLM may use only "
                    f"{utilization * memory:.1f} GiB of its {memory:.1f} GiB; declare the GPU's "
                    "real memory in hxp.yml (hosts[].gpus) and plan again"
                )
    for index, tenants in sorted(load.items()):
        memory = by_index[index]["memory_total_bytes"] / GIB
        total = sum(need for _, need, _ in tenants)
        if total > memory + 1e-6:
            names = ", ".join(f"{name} {need:.1f} GiB" for name, need, _ in tenants)
            problems.append(
                f"GPU {index} ({by_index[index]['name']}) has {memory:.1f} GiB but the plan puts "
                f"{total:.1f} GiB on it ({names}); move a model or quantize it"
            )
        shares = [(name, share) for name, _, share in tenants if share is not None]
        claimed = sum(share for _, share in shares)
        if claimed > 1.0 + 1e-6:
            names = ", ".join(f"{name} {share}" for name, share in shares)
            problems.append(
                f"GPU {index} ({by_index[index]['name']}): the gpu_memory_utilization of the "
                f"models on it add up to {claimed:.2f} ({names}), more than the whole GPU; vLLM "
                "does not start a model when less than its share is free: lower "
                "gpu_memory_utilization in hxp.yml or move a model"
            )
    return problems


def main() -> None:
    module = AnsibleModule(
        argument_spec={"required": {"type": "list", "elements": "dict", "default": []}},
        supports_check_mode=True,
    )
    try:
        import pynvml  # noqa: PLC0415 (reported as a module failure, not an import error)
    except ImportError:
        module.fail_json(
            msg="pynvml (nvidia-ml-py) is not installed for this Python; run the module with a "
            "Python that has it (the vllm role uses its venv's)"
        )
    facts = read_gpus(pynvml)
    problems = plan_problems(facts["hxp_gpus"], module.params["required"])
    if not facts["hxp_nvml_available"] and any(i.get("gpu_ids") for i in module.params["required"]):
        problems.insert(0, f"the plan uses GPUs but none can be read: {facts['hxp_nvml_error']}")
    module.exit_json(
        changed=False,
        ansible_facts=facts,
        config_gpus=config_gpus(facts["hxp_gpus"]),
        problems=problems,
    )


if __name__ == "__main__":
    main()
