"""The semantic strategy's static embedding: a new prompt's category in about a millisecond.

An embeddings call to vLLM costs a new prompt 25 ms on a CPU without AVX-512 (all-MiniLM-L6-v2,
64 tokens; docs/benchmarks.md, "Semantic routing decision"). A *static table* answers most
prompts without it. It holds one vector per token of the embedding model's WordPiece
vocabulary: the model's own embedding of that token alone (``[CLS] token [SEP]``, asked of the
embeddings backend with token ids), weighted by ``log(1 + token id)``, since BERT vocabularies
number their frequent pieces first. That is model2vec's distillation without its PCA, which did
not route better here. A prompt's static vector is the normalised mean of its tokens' rows.

The static vector decides alone when it is *confident*: its cosine with the nearest category
prototype (the categories' examples embedded the same way) beats the second nearest by at
least ``router.semantic.static.confident_margin``. Otherwise the prompt goes to the embedding
model as before. On the lab's categories a margin of 0.04 kept 95 % of the model's decisions
while 61 % of the prompts needed no embeddings call (docs/benchmarks.md).

The router builds the table once per vocabulary and model from the embeddings backend, at
start-up, and keeps it in its state directory (systemd's ``StateDirectory``); the workers share
one build under a file lock and map the file read-only. Until the table is ready every new
prompt goes to the embedding model.

The tokenizer is BERT's uncased WordPiece as the fast tokenizer runs it: control characters
dropped, CJK ideographs split, accents stripped (NFD, marks removed), lower case, split on
whitespace and punctuation, then greedy longest-match pieces with ``##``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import math
import mmap
import os
import re
import sys
import unicodedata
from array import array
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import add
from pathlib import Path

from hxp_runtime.config import Category
from hxp_runtime.router.semantic import MAX_PROMPT_CHARS, normalise, prototype

MAGIC = b"HXPSTAT1"
MAX_TOKENS = 256  # a prompt's first tokens decide; the lab's MiniLM reads 256 at most
MAX_WORD_CHARS = 100  # BERT's max_input_chars_per_word: a longer word is [UNK]
MAX_VOCABULARY = 1_000_000
MAX_PIECE_CHARS = 200
BUILD_BATCH = 512  # token inputs per embeddings request while building
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORD_CACHE_SIZE = 65536

# ASCII fast path: lower case, drop control bytes, words of letters and digits, punctuation alone.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")


class StaticTableError(Exception):
    """A vocabulary or table file that cannot be used; the message names it and why."""


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def basic_words(text: str) -> list[str]:
    """BERT's basic tokenizer (uncased): the words and punctuation marks WordPiece splits."""
    if text.isascii():
        return _ASCII_WORDS.findall(_ASCII_CONTROL.sub("", text).lower())
    spaced = []
    for ch in text:
        cp = ord(ch)
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            spaced.append(" ")
        elif cp in {0, 0xFFFD} or unicodedata.category(ch).startswith("C"):
            continue
        elif _is_cjk(cp):
            spaced.append(f" {ch} ")
        else:
            spaced.append(ch)
    decomposed = unicodedata.normalize("NFD", "".join(spaced))
    stripped = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn").lower()
    words: list[str] = []
    for chunk in stripped.split():
        current: list[str] = []
        for ch in chunk:
            if _is_punctuation(ch):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(ch)
            else:
                current.append(ch)
        if current:
            words.append("".join(current))
    return words


class WordPiece:
    """The token ids of a text, as the embedding model's tokenizer gives them (no [CLS]/[SEP])."""

    def __init__(self, vocabulary: Mapping[str, int]) -> None:
        self.vocabulary = vocabulary
        self.unknown = vocabulary["[UNK]"]
        self._words: dict[str, tuple[int, ...]] = {}
        # No piece is longer: a hostile long word costs at most this many lookups per place.
        self._longest = max(len(p.removeprefix("##")) for p in vocabulary)

    def word(self, word: str) -> tuple[int, ...]:
        known = self._words.get(word)
        if known is not None:
            return known
        pieces = self._pieces(word)
        if len(self._words) >= _WORD_CACHE_SIZE:
            self._words.clear()
        self._words[word] = pieces
        return pieces

    def _pieces(self, word: str) -> tuple[int, ...]:
        if len(word) > MAX_WORD_CHARS:
            return (self.unknown,)
        vocabulary, pieces, start = self.vocabulary, [], 0
        while start < len(word):
            end, found = min(len(word), start + self._longest), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                found = vocabulary.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return (self.unknown,)
            pieces.append(found)
            start = end
        return tuple(pieces)

    def ids(self, text: str, limit: int = MAX_TOKENS) -> list[int]:
        out: list[int] = []
        for word in basic_words(text[:MAX_PROMPT_CHARS]):
            out.extend(self.word(word))
            if len(out) >= limit:
                return out[:limit]
        return out


def read_vocabulary(path: Path) -> tuple[dict[str, int], str]:
    """A WordPiece ``vocab.txt`` (one piece per line, the id is the line number) and its sha256."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StaticTableError(f"{path}: cannot read the vocabulary: {exc.strerror}") from None
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise StaticTableError(f"{path}: not UTF-8 (byte {exc.start})") from None
    if lines and lines[-1] == "":
        lines.pop()
    if not 0 < len(lines) <= MAX_VOCABULARY:
        raise StaticTableError(
            f"{path}: {len(lines)} lines; a WordPiece vocabulary has 1 to {MAX_VOCABULARY}"
        )
    vocabulary: dict[str, int] = {}
    for number, line in enumerate(lines):
        piece = line.rstrip("\r")
        if len(piece) > MAX_PIECE_CHARS:
            raise StaticTableError(
                f"{path}, line {number + 1}: a piece of {len(piece)} characters (at most "
                f"{MAX_PIECE_CHARS}); is this the embedding model's vocab.txt?"
            )
        vocabulary.setdefault(piece, number)
    missing = [token for token in SPECIAL[1:4] if token not in vocabulary]
    if missing:
        raise StaticTableError(
            f"{path}: no {', '.join(missing)}; give the vocab.txt of a BERT-style embedding model"
        )
    return vocabulary, hashlib.sha256(raw).hexdigest()


def token_weight(token_id: int) -> float:
    return math.log(1 + token_id)


def skipped_ids(vocabulary: Mapping[str, int]) -> frozenset[int]:
    """Ids that get a zero row: special tokens and the vocabulary's ``[unused…]`` slots."""
    return frozenset(
        i for piece, i in vocabulary.items() if piece in SPECIAL or piece.startswith("[unused")
    )


@dataclass(frozen=True)
class TableKey:
    """What a table was built from; a table for another key is rebuilt."""

    model: str
    vocabulary_sha256: str

    def file_name(self) -> str:
        digest = hashlib.sha256(f"{self.model}\0{self.vocabulary_sha256}".encode()).hexdigest()
        return f"static-{digest[:24]}.bin"


class StaticTable:
    """Rows of float32, one per token id, read from a mapped file (shared by every worker)."""

    def __init__(self, rows: Sequence[float], dims: int, vocabulary: Mapping[str, int]) -> None:
        self.rows = rows
        self.dims = dims
        self.tokenizer = WordPiece(vocabulary)
        self.skipped = skipped_ids(vocabulary)

    def vector(self, text: str) -> tuple[float, ...] | None:
        """The prompt's static vector; None when none of its tokens has a row."""
        ids = [i for i in self.tokenizer.ids(text) if i not in self.skipped]
        if not ids:
            return None
        rows, dims = self.rows, self.dims
        total = rows[ids[0] * dims : ids[0] * dims + dims]
        acc = list(total)
        for i in ids[1:]:
            acc = list(map(add, acc, rows[i * dims : i * dims + dims]))
        if not any(acc):
            return None
        return normalise(acc)

    def prototypes(self, categories: Mapping[str, Category]) -> dict[str, tuple[float, ...]]:
        result = {}
        for name, category in categories.items():
            vectors = [v for v in map(self.vector, category.examples) if v is not None]
            if vectors:
                result[name] = prototype(vectors)
        return result


def write_table(path: Path, key: TableKey, rows: array[float], dims: int) -> None:
    """Write atomically (a temporary file, then rename), mode 0600."""
    header = json.dumps(
        {
            "model": key.model,
            "vocabulary_sha256": key.vocabulary_sha256,
            "rows": len(rows) // dims,
            "dims": dims,
            "byteorder": sys.byteorder,
        }
    ).encode()
    padding = b" " * (-(len(MAGIC) + 4 + len(header)) % 4)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(MAGIC + (len(header) + len(padding)).to_bytes(4, "little") + header + padding)
        rows.tofile(out)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)


def read_table(path: Path, key: TableKey, vocabulary: Mapping[str, int]) -> StaticTable | None:
    """The table at ``path`` when it was built for ``key``; None when absent or for another."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(len(MAGIC) + 4)
        if len(head) < len(MAGIC) + 4 or head[: len(MAGIC)] != MAGIC:
            raise StaticTableError(f"{path}: not a static table (remove it to rebuild)")
        length = int.from_bytes(head[len(MAGIC) :], "little")
        try:
            meta = json.loads(handle.read(min(length, 4096)))
            rows, dims = int(meta["rows"]), int(meta["dims"])
            built_for = TableKey(str(meta["model"]), str(meta["vocabulary_sha256"]))
            byteorder = meta["byteorder"]
        except (ValueError, KeyError, TypeError) as exc:
            raise StaticTableError(f"{path}: unreadable header ({exc}); remove it") from None
        start = len(MAGIC) + 4 + length
        if built_for != key or byteorder != sys.byteorder:
            return None
        if rows != len(vocabulary) or not 0 < dims <= 8192 or size != start + rows * dims * 4:
            raise StaticTableError(
                f"{path}: {size} bytes do not hold {rows} rows of {dims} (remove it to rebuild)"
            )
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)[start:].cast("f")
    return StaticTable(view, dims, vocabulary)


EmbedIds = Callable[[list[list[int]]], Awaitable[list[tuple[float, ...]]]]


async def build_rows(
    vocabulary: Mapping[str, int], embed_ids: EmbedIds, *, batch: int = BUILD_BATCH
) -> tuple[array[float], int]:
    """Every token's row: the embedding of ``[CLS] token [SEP]``, times its weight."""
    cls, sep = vocabulary["[CLS]"], vocabulary["[SEP]"]
    size = max(vocabulary.values()) + 1
    skipped = skipped_ids(vocabulary)
    wanted = [i for i in range(size) if i not in skipped]
    rows: array[float] | None = None
    dims = 0
    for at in range(0, len(wanted), batch):
        chunk = wanted[at : at + batch]
        vectors = await embed_ids([[cls, i, sep] for i in chunk])
        if rows is None:
            dims = len(vectors[0])
            rows = array("f", bytes(4 * size * dims))
        for i, vector in zip(chunk, vectors, strict=True):
            if len(vector) != dims:
                raise StaticTableError(
                    f"the embeddings backend gave {len(vector)} dims, not {dims}"
                )
            weight = token_weight(i)
            rows[i * dims : i * dims + dims] = array("f", (x * weight for x in vector))
    if rows is None:
        raise StaticTableError("the vocabulary has no ordinary token to embed")
    return rows, dims


async def load_or_build(
    directory: Path,
    vocabulary_path: Path,
    model: str,
    embed_ids: EmbedIds,
) -> StaticTable:
    """The table for this vocabulary and model: read from ``directory``, or built there once.

    Workers serialise on ``directory/static.lock``: the first builds, the others then read it.
    """
    vocabulary, sha = read_vocabulary(vocabulary_path)
    key = TableKey(model, sha)
    path = directory / key.file_name()
    table = read_table(path, key, vocabulary)
    if table is not None:
        return table
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        lock_fd = os.open(directory / "static.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StaticTableError(
            f"{directory}: cannot keep the table there ({exc.strerror}); give a directory the "
            "router may write (router.semantic.static.cache_dir, the unit's StateDirectory)"
        ) from None
    try:
        await _lock(lock_fd)
        table = read_table(path, key, vocabulary)
        if table is None:
            rows, dims = await build_rows(vocabulary, embed_ids)
            try:
                write_table(path, key, rows, dims)
            except OSError as exc:
                raise StaticTableError(f"{path}: cannot write the table ({exc.strerror})") from None
            table = read_table(path, key, vocabulary)
            assert table is not None
        return table
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)


async def _lock(fd: int) -> None:
    """Take the build lock without blocking the event loop (another worker may hold it)."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(0.5)


@dataclass(frozen=True)
class StaticRouting:
    """A loaded table, its category prototypes and the margin that makes a vector confident."""

    table: StaticTable
    prototypes: Mapping[str, Sequence[float]]
    confident_margin: float

    def confident(self, prompt: str) -> tuple[float, ...] | None:
        """The prompt's static vector when it picks a category by the margin; else None."""
        vector = self.table.vector(prompt)
        if vector is None or len(self.prototypes) < 1:
            return None
        if len(self.prototypes) == 1:
            return vector
        first = second = -2.0
        for proto in self.prototypes.values():
            cosine = sum(map(float.__mul__, vector, proto))
            if cosine > first:
                first, second = cosine, first
            elif cosine > second:
                second = cosine
        return vector if first - second >= self.confident_margin else None
