"""Known models: the HXP design's four experts and the embeddings model, with their defaults.

A model entry in hxp.yml may name one of these with ``preset:``; every field the entry leaves
out is taken from the preset. Architecture facts are from each model's published config.json,
so the planner can size a model whose files are not on the controller.
"""

from __future__ import annotations

from typing import Any

# BERT's learned position table: a longer max_model_len than the schema's default would not
# start, so the preset sets this one too.
MINILM_CONTEXT = 512

# Architecture numbers: parameters (billions), decoder layers, attention heads, KV heads,
# head size, and the context the model was trained for.
PRESETS: dict[str, dict[str, Any]] = {
    "mixtral-8x7b": {
        "served_name": "mixtral-8x7b",
        "source": {"hf_id": "mistralai/Mixtral-8x7B-Instruct-v0.1"},
        "port": 11400,
        "memory_limit_gb": 90,
        "cpu_cores": 8,
        "categories": ["reasoning", "analysis"],
        "slo": {"latency_ms": 2000, "throughput_rps": 50},
        "architecture": {
            "params_b": 46.7,
            "num_layers": 32,
            "num_attention_heads": 32,
            "num_kv_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 32768,
        },
    },
    "hermes-2": {
        "served_name": "hermes-2",
        "source": {"hf_id": "NousResearch/Nous-Hermes-2-Mistral-7B-DPO"},
        "port": 11401,
        "memory_limit_gb": 15,
        "cpu_cores": 4,
        "categories": ["general", "creative"],
        "slo": {"latency_ms": 1500, "throughput_rps": 30},
        "architecture": {
            "params_b": 7.24,
            "num_layers": 32,
            "num_attention_heads": 32,
            "num_kv_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 32768,
        },
    },
    "openchat-3.5": {
        "served_name": "openchat-3.5",
        "source": {"hf_id": "openchat/openchat-3.5-0106"},
        "port": 11402,
        "memory_limit_gb": 8,
        "cpu_cores": 4,
        "categories": ["chat", "code"],
        "slo": {"latency_ms": 1000, "throughput_rps": 40},
        "architecture": {
            "params_b": 7.24,
            "num_layers": 32,
            "num_attention_heads": 32,
            "num_kv_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 8192,
        },
    },
    "phi-3-mini": {
        "served_name": "phi-3-mini",
        "source": {"hf_id": "microsoft/Phi-3-mini-4k-instruct"},
        "port": 11403,
        "memory_limit_gb": 4,
        "cpu_cores": 2,
        "categories": ["quick", "classification"],
        "slo": {"latency_ms": 500, "throughput_rps": 60},
        "architecture": {
            "params_b": 3.82,
            "num_layers": 32,
            "num_attention_heads": 32,
            "num_kv_heads": 32,
            "head_dim": 96,
            "max_position_embeddings": 4096,
        },
    },
    "all-minilm-l6-v2": {
        "served_name": "all-minilm-l6-v2",
        "task": "embed",
        "source": {"hf_id": "sentence-transformers/all-MiniLM-L6-v2"},
        "port": 11404,
        "memory_limit_gb": 2,
        "cpu_cores": 1,
        "categories": [],
        "slo": {"latency_ms": 100, "throughput_rps": 200},
        "engine": {"max_model_len": MINILM_CONTEXT},
        "architecture": {
            "params_b": 0.0227,
            "num_layers": 6,
            "num_attention_heads": 12,
            "num_kv_heads": 12,
            "head_dim": 32,
            "max_position_embeddings": MINILM_CONTEXT,
        },
    },
}


def merge_preset(preset: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """Entry values win; nested mappings (slo, source, architecture, engine) merge key by key."""
    merged: dict[str, Any] = dict(preset)
    for key, value in entry.items():
        base = merged.get(key)
        if isinstance(base, dict) and isinstance(value, dict):
            merged[key] = {**base, **value}
        else:
            merged[key] = value
    return merged
