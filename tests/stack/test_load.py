"""The load tool against the deployed stack: steady load with nothing changing fails nothing,
and the answers name the backends that served them."""

from __future__ import annotations

import re

from hxp_runtime.config import HxpConfig
from tests.stack.load import start_load


def test_steady_load_through_the_router_fails_nothing(cfg: HxpConfig) -> None:
    report = start_load(
        cfg, models=["hermes", "phi3", "minilm"], concurrency=4, duration_s=5
    ).wait()
    assert report["failed"] == {}, report["failures"]
    assert report["sent"] == report["ok"] > 0
    assert sum(b["ok"] for b in report["timeline"]) == report["ok"]
    # A backend's id is its model's name, with -N for a second or later replica.
    served = {re.sub(r"-\d+$", "", backend) for backend in report["by_backend"]}
    assert served <= {m.name for m in cfg.models}
    assert "minilm" in served  # embeddings have no fallback: minilm answered them itself
