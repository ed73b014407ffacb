"""The static table: its tokenizer against the model's own, its file, its build and its margin."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import time
from array import array
from pathlib import Path

import pytest

from hxp_runtime.config import Category
from hxp_runtime.router.metrics import RouterMetrics
from hxp_runtime.router.pipeline import choose_models
from hxp_runtime.router.semantic import EmbeddingError
from hxp_runtime.router.static_embedding import (
    MAGIC,
    StaticRouting,
    StaticTable,
    StaticTableError,
    TableKey,
    WordPiece,
    basic_words,
    load_or_build,
    read_table,
    read_vocabulary,
    token_weight,
)
from hxp_runtime.router.strategies import Endpoint, RouteRequest, RoutingTable
from tests.unit.router.test_strategies import settings

MINILM = Path(".cache/models/all-minilm-l6-v2")

ODD_TEXTS = [
    "Hello, World! How are you?",
    "Prove that 17 is prime.",
    "Café naïve résumé — déjà vu",
    "İstanbul ß ŒUVRE Ǆ",
    "東京タワーは高い。中文测试",
    "emoji 😀👍🏽 and symbols ™ © ∑ ≤ €100",
    "tabs\tand\nnew\r\nlines   and\u00a0nbsp\u2003em space",
    "control\x00chars\x07here\x7f\x0bjoined\u200bzero\ufeffwidth\ufffdrepl",
    "a" * 150 + " supercalifragilisticexpialidocious",
    "def f(x): return x ** 2  # comment {braces} [brackets] <tags>",
    "https://example.com/path?query=1&b=2 user@example.org",
    "Ünïcödé ÀÉÎÕÜ àéîõü ñ ç",
    "Ελληνικά кириллица עברית العربية हिन्दी",
    "don't won't it's O'Neil's co-operate e.g. i.e.",
    "",
    "   ",
    "1234567890 3.14159 -42 +7 1e10",
]


def random_texts(count: int, seed: int) -> list[str]:
    pool = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        " \t\n.,;:!?'\"()[]{}<>-_/\\@#$%^&*+=~`|"
        "éèàüöäßçñøåÉÀÜÖ中文日本語한국어ЖжΩω€£¥©®™…\u2014\u2013\u201c\u201d\u2018\u2019\u00a0\u200b\x00\x01\x7f😀"
    )
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 80))) for _ in range(count)]


def tiny_vocabulary(tmp_path: Path) -> Path:
    pieces = [
        "[PAD]",
        "[unused0]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "!",
        ",",
        ".",
        "?",
        "a",
        "b",
        "c",
        "write",
        "poem",
        "code",
        "python",
        "##s",
        "##ing",
        "hello",
        "rain",
        "sort",
        "list",
        "un",
        "##believ",
        "##able",
    ]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(pieces) + "\n")
    return path


def test_wordpiece_pieces_and_unknown_words(tmp_path: Path) -> None:
    vocabulary, _ = read_vocabulary(tiny_vocabulary(tmp_path))
    tokenizer = WordPiece(vocabulary)
    ids = tokenizer.ids("Writing POEMS, unbelievable! zzz")
    names = {i: p for p, i in vocabulary.items()}
    # "writing": no piece starts it ("write" is not a prefix), so the whole word is [UNK].
    assert [names[i] for i in ids] == [
        "[UNK]",
        "poem",
        "##s",
        ",",
        "un",
        "##believ",
        "##able",
        "!",
        "[UNK]",
    ]
    assert [names[i] for i in tokenizer.ids("sorting")] == ["sort", "##ing"]
    assert [names[i] for i in tokenizer.ids("sortx")] == ["[UNK]"]  # no "##x": the whole word
    assert [names[i] for i in tokenizer.ids("sorts")] == ["sort", "##s"]
    assert tokenizer.ids("a" * 101) == [vocabulary["[UNK]"]]
    assert len(tokenizer.ids("a " * 1000, limit=7)) == 7


def test_basic_words_split_punctuation_accents_and_cjk() -> None:
    assert basic_words("Hello,World!") == ["hello", ",", "world", "!"]
    assert basic_words("Café\u00a0déjà") == ["cafe", "deja"]
    assert basic_words("東京abc") == ["東", "京", "abc"]
    assert basic_words("a\x00b\x7fc d") == ["abc", "d"]
    assert basic_words("x\u200by") == ["xy"]  # a format character is dropped, not a space


@pytest.mark.slow
@pytest.mark.vllm
def test_tokenizer_matches_the_models_own_on_odd_and_random_text(vllm_python: Path) -> None:
    """The same ids as the model's fast tokenizer (what vLLM runs) for ~600 texts."""
    vocab = MINILM / "vocab.txt"
    if not vocab.exists():
        pytest.skip(f"{vocab} is missing: run `hxp lab model`")
    texts = ODD_TEXTS + random_texts(600, seed=14)
    script = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({str(MINILM)!r})\n"
        "texts = json.load(sys.stdin)\n"
        "print(json.dumps([tok(t, add_special_tokens=False)['input_ids'] for t in texts]))\n"
    )
    result = subprocess.run(
        [str(vllm_python), "-c", script],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        timeout=300,
    )
    expected = json.loads(result.stdout.strip().splitlines()[-1])
    vocabulary, _ = read_vocabulary(vocab)
    tokenizer = WordPiece(vocabulary)
    differ = [
        (t, want, got)
        for t, want in zip(texts, expected, strict=True)
        if (got := tokenizer.ids(t, limit=10_000)) != want
    ]
    assert not differ, f"{len(differ)} of {len(texts)} differ, first: {differ[0]!r}"


def test_vocabulary_problems_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(StaticTableError, match="cannot read"):
        read_vocabulary(missing)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"[UNK]\n\xff\xfe\n")
    with pytest.raises(StaticTableError, match="not UTF-8"):
        read_vocabulary(binary)
    plain = tmp_path / "plain.txt"
    plain.write_text("hello\nworld\n")
    with pytest.raises(StaticTableError, match=r"no \[UNK\], \[CLS\], \[SEP\]"):
        read_vocabulary(plain)
    long = tmp_path / "long.txt"
    long.write_text("[UNK]\n[CLS]\n[SEP]\n" + "x" * 300 + "\n")
    with pytest.raises(StaticTableError, match="line 4: a piece of 300 characters"):
        read_vocabulary(long)


def fake_backend(dims: int = 8) -> tuple[list[list[list[int]]], object]:
    """A test double of the embeddings backend: a fixed unit vector per middle token id."""
    calls: list[list[list[int]]] = []

    async def embed_ids(inputs: list[list[int]]) -> list[tuple[float, ...]]:
        calls.append(inputs)
        out = []
        for _cls, token, _sep in inputs:
            rng = random.Random(token)
            v = [rng.gauss(0, 1) for _ in range(dims)]
            norm = math.sqrt(sum(x * x for x in v))
            out.append(tuple(x / norm for x in v))
        return out

    return calls, embed_ids


def test_build_weights_rows_skips_specials_and_is_read_back(tmp_path: Path) -> None:
    vocab = tiny_vocabulary(tmp_path)
    vocabulary, sha = read_vocabulary(vocab)
    calls, embed_ids = fake_backend()
    table = asyncio.run(load_or_build(tmp_path / "state", vocab, "minilm", embed_ids))  # type: ignore[arg-type]
    asked = [row for call in calls for row in call]
    assert all(row[0] == vocabulary["[CLS]"] and row[2] == vocabulary["[SEP]"] for row in asked)
    middle = {row[1] for row in asked}
    assert middle.isdisjoint(
        {vocabulary[p] for p in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]")}
    )
    assert len(middle) == len(vocabulary) - 6
    poem = vocabulary["poem"]
    _, single = fake_backend()
    (vector,) = asyncio.run(single([[0, poem, 0]]))  # type: ignore[operator]
    row = list(table.rows[poem * table.dims : (poem + 1) * table.dims])
    assert row == pytest.approx([x * token_weight(poem) for x in vector], rel=1e-6)
    assert list(table.rows[0 : table.dims]) == [0.0] * table.dims  # [PAD]: a zero row
    # The file is 0600 and a second load reads it without asking the backend again.
    (path,) = (tmp_path / "state").glob("static-*.bin")
    assert path.stat().st_mode & 0o777 == 0o600
    calls.clear()
    again = asyncio.run(load_or_build(tmp_path / "state", vocab, "minilm", embed_ids))  # type: ignore[arg-type]
    assert calls == [] and again.vector("write a poem") == table.vector("write a poem")
    # Another model's table is another file: built anew, the first one left alone.
    asyncio.run(load_or_build(tmp_path / "state", vocab, "other-model", embed_ids))  # type: ignore[arg-type]
    assert calls and len(list((tmp_path / "state").glob("static-*.bin"))) == 2
    assert read_table(path, TableKey("minilm", sha), vocabulary) is not None


def test_a_damaged_table_is_refused_with_its_path(tmp_path: Path) -> None:
    vocab = tiny_vocabulary(tmp_path)
    vocabulary, sha = read_vocabulary(vocab)
    _, embed_ids = fake_backend()
    asyncio.run(load_or_build(tmp_path, vocab, "minilm", embed_ids))  # type: ignore[arg-type]
    (path,) = tmp_path.glob("static-*.bin")
    key = TableKey("minilm", sha)
    data = path.read_bytes()
    path.write_bytes(data[:-4])
    with pytest.raises(StaticTableError, match=f"{path}: .* do not hold"):
        read_table(path, key, vocabulary)
    path.write_bytes(b"garbage!" + data[len(MAGIC) :])
    with pytest.raises(StaticTableError, match="not a static table"):
        read_table(path, key, vocabulary)
    path.write_bytes(MAGIC + (5).to_bytes(4, "little") + b"{oops" + data[len(MAGIC) + 4 :])
    with pytest.raises(StaticTableError, match="unreadable header"):
        read_table(path, key, vocabulary)


def test_workers_build_the_table_once(tmp_path: Path) -> None:
    """Four loaders at once (as four workers start): one build, four equal tables."""
    vocab = tiny_vocabulary(tmp_path)
    calls, embed_ids = fake_backend()

    async def slow(inputs: list[list[int]]) -> list[tuple[float, ...]]:
        await asyncio.sleep(0.2)
        return await embed_ids(inputs)  # type: ignore[operator, no-any-return]

    async def four() -> list[object]:
        return await asyncio.gather(
            *(load_or_build(tmp_path, vocab, "minilm", slow) for _ in range(4))
        )

    tables = asyncio.run(four())
    assert len(calls) == 1  # 20 tokens: one batch, asked once
    assert len({t.vector("hello rain") for t in tables}) == 1  # type: ignore[attr-defined]


def test_the_margin_decides_which_prompts_the_table_answers(tmp_path: Path) -> None:
    vocab = tiny_vocabulary(tmp_path)
    _, embed_ids = fake_backend(dims=16)
    table = asyncio.run(load_or_build(tmp_path, vocab, "minilm", embed_ids))  # type: ignore[arg-type]
    categories = {
        "creative": Category(description="poems", examples=["write a poem about rain"]),
        "code": Category(description="code", examples=["python code to sort a list"]),
    }
    prototypes = table.prototypes(categories)
    always = StaticRouting(table, prototypes, confident_margin=0.0)
    never = StaticRouting(table, prototypes, confident_margin=2.0)
    assert always.confident("a poem about rain") is not None
    assert never.confident("a poem about rain") is None
    assert always.confident("zzz qqq") is None  # only [UNK]: no vector at all
    vector = always.confident("poem rain")
    assert vector is not None
    cosines = {n: sum(a * b for a, b in zip(vector, p, strict=True)) for n, p in prototypes.items()}
    margin = abs(cosines["creative"] - cosines["code"])
    assert StaticRouting(table, prototypes, margin - 1e-6).confident("poem rain") is not None
    assert StaticRouting(table, prototypes, margin + 1e-6).confident("poem rain") is None


def test_a_64_token_prompt_costs_a_few_milliseconds_at_most() -> None:
    """MiniLM's vocabulary and its 384 dims (the rows' values do not change the cost)."""
    vocab = MINILM / "vocab.txt"
    if not vocab.exists():
        pytest.skip(f"{vocab} is missing: run `hxp lab model`")
    vocabulary, _ = read_vocabulary(vocab)
    dims = 384
    rows = array("f", [0.01, -0.02, 0.03]) * (len(vocabulary) * dims // 3)
    table = StaticTable(memoryview(rows), dims, vocabulary)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "reading"]
    rng = random.Random(1)
    prompts = [" ".join(rng.choice(words) for _ in range(61)) + "?" for _ in range(50)]
    assert all(len(table.tokenizer.ids(p)) == 62 for p in prompts)
    started = time.process_time()
    for prompt in prompts:
        table.tokenizer._words.clear()
        assert table.vector(prompt) is not None
    per_prompt_ms = (time.process_time() - started) / len(prompts) * 1000
    assert per_prompt_ms < 5.0, per_prompt_ms


class RefusingEmbedder:
    """A test double of the embeddings backend's client that counts the calls it refuses."""

    def __init__(self) -> None:
        self.calls = 0

    async def embed(self, texts: list[str]) -> list[tuple[float, ...]]:
        self.calls += 1
        raise EmbeddingError("the embeddings backend is down")


def test_a_sure_table_decides_without_the_embeddings_backend(tmp_path: Path) -> None:
    """The pipeline: the table's choice needs no call; an unsure prompt still asks the model."""
    vocab = tiny_vocabulary(tmp_path)
    _, embed_ids = fake_backend(dims=16)
    table = asyncio.run(load_or_build(tmp_path, vocab, "minilm", embed_ids))  # type: ignore[arg-type]
    config = settings(strategies=["explicit", "semantic"], semantic={"embedding_model": "embed"})
    config = config.model_copy(
        update={
            "categories": {
                "code": Category(description="code", examples=["python code to sort a list"]),
                "creative": Category(description="poems", examples=["write a poem about rain"]),
            }
        }
    )
    model_prototypes = {"code": (1.0, 0.0), "creative": (0.0, 1.0)}  # never compared here
    static = StaticRouting(table, table.prototypes(config.categories), confident_margin=0.0)
    routing = RoutingTable(config, model_prototypes, static=static)
    embedder = RefusingEmbedder()
    metrics = RouterMetrics()

    async def choose(table_: RoutingTable, prompt: str) -> str:
        request = RouteRequest(Endpoint.CHAT, None, prompt)
        choice = await choose_models(table_, request, embedder, metrics)  # type: ignore[arg-type]
        return choice[0][0].model

    assert asyncio.run(choose(routing, "a python code list")) == "coder"
    assert asyncio.run(choose(routing, "a poem about rain")) == "writer"
    assert embedder.calls == 0
    assert metrics.model_choice_duration.labels("static")._sum.get() > 0
    # Unsure (margin 2): the model is asked; it is down, so the choice is made without it.
    unsure = StaticRouting(table, static.prototypes, confident_margin=2.0)
    asyncio.run(choose(RoutingTable(config, model_prototypes, static=unsure), "a poem"))
    assert embedder.calls == 1


def test_a_hostile_prompt_costs_the_tokenizer_little() -> None:
    """2,000 characters of 99-letter words, each one new, as the router reads them.

    Each place in such a word tries pieces no longer than the vocabulary's longest (18 for
    MiniLM): 1.3 ms a prompt, against 3.9 ms trying every length up to the word's end.
    """
    vocab = MINILM / "vocab.txt"
    if not vocab.exists():
        pytest.skip(f"{vocab} is missing: run `hxp lab model`")
    vocabulary, _ = read_vocabulary(vocab)
    tokenizer = WordPiece(vocabulary)
    rng = random.Random(3)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(99)) for _ in range(200)]
    prompts = [" ".join(words[i : i + 20]) for i in range(0, 200, 20)]
    started = time.process_time()
    for prompt in prompts:
        assert len(tokenizer.ids(prompt)) == 256  # the first 256 tokens decide
    per_prompt_ms = (time.process_time() - started) / len(prompts) * 1000
    assert per_prompt_ms < 5.0, per_prompt_ms


def test_embeddings_come_as_numbers_or_base64_and_a_bad_one_is_refused() -> None:
    import base64
    import struct

    from hxp_runtime.router.semantic import vector

    packed = base64.b64encode(struct.pack("<3f", 0.5, -1.0, 2.0)).decode()
    assert list(vector(packed)) == [0.5, -1.0, 2.0]
    assert vector([0.5, 1.0]) == [0.5, 1.0]
    with pytest.raises(ValueError):
        vector(base64.b64encode(b"\x00\x01\x02").decode())  # not whole float32s
    with pytest.raises(ValueError):
        vector("not base64 at all!")
