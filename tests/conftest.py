"""Fixtures shared by every test package.

vLLM fixtures (``vllm_python``, ``tiny_models``, ``vllm_servers``) start real vLLM CPU servers
on loopback: see tests/vllm_servers.py for how to use them.
"""

from tests.vllm_servers import tiny_models, vllm_python, vllm_servers

__all__ = ["tiny_models", "vllm_python", "vllm_servers"]
