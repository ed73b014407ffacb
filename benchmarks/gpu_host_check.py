"""A GPU host checked with hxp's own GPU programs against its real NVIDIA driver.

    python benchmarks/gpu_host_check.py [--out DIR]

Needs an NVIDIA GPU with at least 100 GiB of memory (Mixtral-8x7B's weights in bf16), PyTorch,
transformers, nvidia-ml-py, prometheus-client and ansible-core's module_utils in the Python
that runs it. It prints one line per finding and writes them whole to DIR/gpu_host_check.json:

- the GPU exporter (hxp_runtime.host.gpu_exporter), scraped idle, with the weights of the
  largest model resident, and under a matrix-product load;
- the GPU facts module of role vllm (roles/vllm/library/hxp_gpu_facts.py), run as Ansible runs
  it (a JSON args file), with a plan that fits the GPU and one that does not;
- the planner's weight and KV-cache sizes of each catalog preset against the real thing: the
  preset's architecture built by transformers from its published hyper-parameters, placed on
  the GPU in bf16 (uninitialised), its parameters counted and the bytes PyTorch allocated
  for them read; the KV cache per token from that model's own config.

vLLM itself is not run here: its startup memory log (weights, KV-cache blocks, CUDA graphs) is
the check this does not make.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch
import transformers as tf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hxp_runtime.catalog import PRESETS  # noqa: E402
from hxp_runtime.modelinfo import ModelShape  # noqa: E402
from hxp_runtime.planner import GIB, estimate_memory, kv_bytes_per_token  # noqa: E402

PORT = 9835
FACTS = ROOT / "roles/vllm/library/hxp_gpu_facts.py"


# Each preset's architecture: its transformers config class and the hyper-parameters of its
# model card's config.json, typed in (nothing is downloaded).
MISTRAL_7B = {
    "vocab_size": 32002,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}
ARCHITECTURES: dict[str, tuple[str, dict[str, int]]] = {
    "all-minilm-l6-v2": (
        "BertConfig",
        {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
         "num_attention_heads": 12, "intermediate_size": 1536, "max_position_embeddings": 512},
    ),
    "phi-3-mini": (
        "Phi3Config",
        {"vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192,
         "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
         "max_position_embeddings": 4096},
    ),
    "hermes-2": ("MistralConfig", MISTRAL_7B),
    "openchat-3.5": ("MistralConfig", MISTRAL_7B),
    "mixtral-8x7b": (
        "MixtralConfig",
        {**MISTRAL_7B, "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2},
    ),
}  # fmt: skip


def transformers_config(preset: str) -> Any:
    kind, hyper = ARCHITECTURES[preset]
    return getattr(tf, kind)(**hyper)


def scrape() -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("hxp_gpu_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def exporter() -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "hxp_runtime.host.gpu_exporter", "--address", "127.0.0.1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            scrape()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.2)


def facts(required: list[dict[str, Any]]) -> dict[str, Any]:
    """The facts module's answer, run as Ansible runs a module: a file of its arguments."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as args:
        json.dump({"ANSIBLE_MODULE_ARGS": {"required": required}}, args)
        args.flush()
        done = subprocess.run(
            [sys.executable, str(FACTS), args.name],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def planned(preset: str, dtype: str = "bfloat16") -> tuple[ModelShape, Any]:
    spec = PRESETS[preset]
    arch = spec["architecture"]
    shape = ModelShape(
        params=arch["params_b"] * 1e9,
        num_layers=arch["num_layers"],
        num_attention_heads=arch["num_attention_heads"],
        num_kv_heads=arch["num_kv_heads"],
        head_dim=arch["head_dim"],
    )
    engine = spec.get("engine", {})
    estimate = estimate_memory(
        shape,
        dtype=dtype,
        quantization=None,
        kv_cache_dtype="auto",
        max_model_len=engine.get("max_model_len", 4096),
        max_num_seqs=engine.get("max_num_seqs", 8),
        overhead_gib_per_gpu=2.0,
        task=spec.get("task", "generate"),
    )
    return shape, estimate


def on_gpu(preset: str, config: Any) -> tuple[Any, dict[str, Any]]:
    """The preset's architecture in bf16 on the GPU, uninitialised; what it took."""
    factory = tf.AutoModel if PRESETS[preset].get("task") == "embed" else tf.AutoModelForCausalLM
    with torch.device("meta"):
        model = factory.from_config(config)
    model = model.to(torch.bfloat16)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    model = model.to_empty(device="cuda")
    torch.cuda.synchronize()
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    allocated = torch.cuda.memory_allocated() - before
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return model, {
        "params": params,
        "allocated_gib": allocated / GIB,
        "buffers_gib": buffers / GIB,
        "kv_bytes_per_token_bf16": 2 * text.num_hidden_layers * kv_heads * head_dim * 2,
    }


def load_gpu(seconds: float) -> tuple[float, dict[str, float]]:
    """bf16 matrix products for ``seconds``: their rate in TFLOP/s, and the exporter scraped
    half-way through."""
    during: dict[str, float] = {}
    reader = threading.Timer(seconds / 2, lambda: during.update(scrape()))
    reader.start()

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    began, products = time.monotonic(), 0
    while time.monotonic() - began < seconds:
        for _ in range(20):
            a @ b
        products += 20
        torch.cuda.synchronize()
    reader.join()
    return products * 2 * 8192**3 / (time.monotonic() - began) / 1e12, during


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    report: dict[str, Any] = {}

    def say(key: str, value: Any) -> None:
        report[key] = value
        print(f"{key}: {json.dumps(value, default=str)}", flush=True)

    process = exporter()
    try:
        say("exporter idle", scrape())
        found = facts([])
        say("facts", found.get("ansible_facts"))
        say("facts config_gpus", found.get("config_gpus"))
        memory_gib = found["ansible_facts"]["hxp_gpus"][0]["memory_total_bytes"] / GIB
        for preset in ARCHITECTURES:  # the largest last: the exporter and facts run beside it
            shape, estimate = planned(preset)
            model, real = on_gpu(preset, transformers_config(preset))
            say(
                f"weights {preset}",
                {
                    "planned_params": shape.params,
                    "real_params": real["params"],
                    "planned_weights_gib": round(estimate.weights_gib, 3),
                    "allocated_gib": round(real["allocated_gib"], 3),
                    "buffers_gib": round(real["buffers_gib"], 4),
                    "planned_kv_bytes_per_token": kv_bytes_per_token(shape, 2.0),
                    "real_kv_bytes_per_token": real["kv_bytes_per_token_bf16"],
                },
            )
            if preset == "mixtral-8x7b":
                time.sleep(1.5)  # the exporter reads NVML at scrape time; let the driver settle
                say("exporter with mixtral resident", scrape())
                need = round(estimate.per_gpu_gib(1), 1)
                fits = [
                    {
                        "name": "mixtral",
                        "gpu_ids": [0],
                        "gpu_memory_utilization": round(min(0.92, need / memory_gib + 0.01), 3),
                        "planned_gpu_memory_gib": need,
                    }
                ]
                say("facts, mixtral alone planned", facts(fits).get("problems"))
                crowded = fits + [
                    {
                        "name": name,
                        "gpu_ids": [0],
                        "gpu_memory_utilization": 0.2,
                        "planned_gpu_memory_gib": round(planned(name)[1].per_gpu_gib(1), 1),
                    }
                    for name in ("hermes-2", "openchat-3.5", "phi-3-mini")
                ]
                say("facts, four models planned on GPU 0", facts(crowded).get("problems"))
            del model
            torch.cuda.empty_cache()
        rate, during = load_gpu(8.0)
        say("matrix products, TFLOP/s", round(rate, 1))
        say("exporter under that load", during)
    finally:
        process.terminate()
        process.wait(timeout=30)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_host_check.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
