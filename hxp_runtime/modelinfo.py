"""Read a model's shape from its files: config.json and safetensors headers.

This is the only I/O sizing a model needs; it is kept here so that the planner itself stays a
set of pure functions (:mod:`hxp_runtime.config.fit` reads shapes through it, or from the size
declared in hxp.yml). Parameter counts come, in order of preference, from the safetensors
headers (exact), the safetensors index's total size, or config.json (computed).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPE_BYTES = {
    "float32": 4.0,
    "float16": 2.0,
    "bfloat16": 2.0,
    "F32": 4.0,
    "F16": 2.0,
    "BF16": 2.0,
    "F8_E4M3": 1.0,
    "F8_E5M2": 1.0,
    "I8": 1.0,
    "U8": 1.0,
    "I32": 4.0,
    "I64": 8.0,
}


class ModelInfoError(Exception):
    """The model's files cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a model's size."""

    params: float
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    torch_dtype: str | None = None
    max_position_embeddings: int | None = None
    origin: str = "declared"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelInfoError(f"{path}: cannot read ({exc}); fix or remove the file") from None
    if not isinstance(data, dict):
        raise ModelInfoError(f"{path}: expected a JSON object")
    return data


def safetensors_param_count(files: list[Path]) -> int:
    """Exact parameter count from the headers of ``files`` (no tensor data is read)."""
    total = 0
    for file in files:
        try:
            with file.open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > 100_000_000:
                    raise ModelInfoError(f"{file}: header length {length} is not plausible")
                header = json.loads(handle.read(length))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelInfoError(f"{file}: not a safetensors file ({exc})") from None
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in tensor["shape"]:
                count *= int(dim)
            total += count
    return total


def params_from_config(cfg: dict[str, Any]) -> float:
    """Parameter count of a decoder-only transformer (Llama, Mistral, Mixtral, Phi-3) config."""
    hidden = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    intermediate = int(cfg.get("intermediate_size", 4 * hidden))
    vocab = int(cfg["vocab_size"])
    experts = int(cfg.get("num_local_experts", 1))
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * intermediate * experts + (hidden * experts if experts > 1 else 0)
    norms = 2 * hidden
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return float(layers * (attention + mlp + norms) + hidden + embeddings)


def shape_from_directory(directory: Path) -> ModelShape:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ModelInfoError(f"{config_file}: not found; point source.local_path at a model dir")
    cfg = _read_json(config_file)
    try:
        heads = int(cfg["num_attention_heads"])
        layers = int(cfg["num_hidden_layers"])
        hidden = int(cfg["hidden_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelInfoError(f"{config_file}: missing or bad {exc}") from None
    context = cfg.get("max_position_embeddings")
    if context is not None and (not isinstance(context, int) or context < 1):
        raise ModelInfoError(
            f"{config_file}: max_position_embeddings {context!r} is not a positive integer"
        )
    tensors = sorted(directory.glob("*.safetensors"))
    index_file = directory / "model.safetensors.index.json"
    torch_dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    if tensors:
        params, origin = float(safetensors_param_count(tensors)), "safetensors"
    elif index_file.is_file() and torch_dtype in DTYPE_BYTES:
        total_size = _read_json(index_file).get("metadata", {}).get("total_size", 0)
        params, origin = float(total_size) / DTYPE_BYTES[torch_dtype], "safetensors index"
    else:
        try:
            params, origin = params_from_config(cfg), "config.json"
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelInfoError(f"{config_file}: cannot count parameters ({exc})") from None
    return ModelShape(
        params=params,
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        torch_dtype=torch_dtype if isinstance(torch_dtype, str) else None,
        max_position_embeddings=context,
        origin=origin,
    )
