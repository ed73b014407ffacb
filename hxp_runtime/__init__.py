"""hxp: deploy a self-hosted, multi-model LLM serving stack onto bare-metal Linux hosts."""

__version__ = "0.1.0"
