"""The checks of a model split across LLM hosts use the whole-stack tests' fixtures: the config
HXP_STACK_CONFIG names (here inventory/lab-pipeline/hxp.yml) and its hosts over SSH."""

from tests.stack.conftest import cfg, hosts, lab_inventory

__all__ = ["cfg", "hosts", "lab_inventory"]
