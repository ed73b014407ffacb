"""How the whole-stack tests reach the lab's router as its clients do: the public URL
(``https://`` when hxp.yml sets ``router.tls``) and the lab's CA that verifies it.

HXP_STACK_CONFIG names the lab's hxp.yml (default inventory/lab/hxp.yml).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import openai

from hxp_runtime.config import HxpConfig, router_address
from hxp_runtime.lab import load_lab

REPO = Path(__file__).resolve().parents[2]
CONFIG = Path(os.environ.get("HXP_STACK_CONFIG", REPO / "inventory/lab/hxp.yml"))


def router_url(cfg: HxpConfig) -> str:
    """The router's base URL, as clients reach it: the virtual address behind which several
    routers run (router.virtual_address), else its host's address."""
    scheme = "https" if cfg.router.tls is not None else "http"
    address = router_address(cfg)
    assert address is not None, "the config names no router host and has no single llm host"
    return f"{scheme}://{address}:{cfg.router.port}"


def router_host_url(cfg: HxpConfig, host: str) -> str:
    """One router host's own base URL: behind a virtual address each router also listens on
    its host's address (role router's socket unit)."""
    scheme = "https" if cfg.router.tls is not None else "http"
    return f"{scheme}://{cfg.host(host).address}:{cfg.router.port}"


def router_ca(cfg: HxpConfig) -> Path | None:
    """The CA that issued the router's certificate (`hxp lab up` keeps it in the lab's state
    directory); None when the router serves plain HTTP."""
    return None if cfg.router.tls is None else load_lab(CONFIG).ca_dir / "ca.crt"


def openai_client(cfg: HxpConfig, key: str, **options: Any) -> openai.OpenAI:
    """The openai SDK at the router's /v1, verifying its certificate against the lab's CA."""
    ca = router_ca(cfg)
    if ca is not None:
        verify = ssl.create_default_context(cafile=ca)
        options["http_client"] = openai.DefaultHttpxClient(verify=verify)
    return openai.OpenAI(base_url=f"{router_url(cfg)}/v1", api_key=key, **options)
