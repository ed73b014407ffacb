"""The scale-out checks use the whole-stack tests' fixtures: the config HXP_STACK_CONFIG names
(here a lab with several LLM hosts, inventory/lab-scale/hxp.yml) and its hosts over SSH."""

from tests.stack.conftest import cfg, config_copy, hosts, lab_inventory

__all__ = ["cfg", "config_copy", "hosts", "lab_inventory"]
