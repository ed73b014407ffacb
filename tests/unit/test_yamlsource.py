"""The YAML loader against hostile and broken input: every file ends as data with a line map or
as a YamlSourceError with a line, within the limits, in well under a second and a few MB."""

from __future__ import annotations

import contextlib
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hxp_runtime import yamlsource
from hxp_runtime.yamlsource import (
    MAX_ALIASES,
    MAX_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    MAX_NUMBER_CHARS,
    LineMap,
    YamlSourceError,
    load_yaml,
)
from tests.unit.conftest import line_of

REPO = Path(__file__).resolve().parents[2]
FILE = Path("hxp.yml")
PARSERS = [name for name in ("_LibyamlLoader", "_PythonLoader") if hasattr(yamlsource, name)]
# The bounds on hostile input hold for libyaml's parser; the pure-Python one PyYAML falls back to
# without libyaml is about three times slower and keeps more per node.
SLOWER = 1 if "_LibyamlLoader" in PARSERS else 3
SECONDS = 1.0 * SLOWER
PEAK_BYTES = 20 * 1024 * 1024 * SLOWER


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs a test with libyaml's parser and with the pure-Python one it falls back to."""
    monkeypatch.setattr(yamlsource, "_Loader", getattr(yamlsource, request.param))
    yield request.param


def _encoded(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


def load(text: str | bytes) -> tuple[Any, LineMap]:
    return load_yaml(FILE, text=_encoded(text))


def error_of(text: str | bytes) -> YamlSourceError:
    with pytest.raises(YamlSourceError) as caught:
        load(text)
    return caught.value


def hostile(text: str | bytes) -> YamlSourceError:
    """The error ``text`` gets, checked to come within the time and memory bounds.

    Time and memory are measured in separate runs: tracemalloc slows Python down severalfold.
    Time is CPU time, as in every bound of this file: the parser's work, whatever else the
    machine is running.
    """
    raw = _encoded(text)
    start = time.process_time()
    error = error_of(raw)
    elapsed = time.process_time() - start
    tracemalloc.start()
    try:
        error_of(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < SECONDS, f"took {elapsed:.2f} s"
    assert peak < PEAK_BYTES, f"peaked at {peak / 2**20:.1f} MiB"
    return error


# --- bounded parsing: alias expansion ------------------------------------------------------


def laughs_in_lists(width: int, levels: int) -> tuple[str, int]:
    """A billion laughs: each level a list of ``width`` aliases of the level before. Returns the
    text and the line of the first level that expands past MAX_NODES."""
    rows = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    rows += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * width)}]" for n in range(1, levels)]
    return "\n".join(rows) + "\n", _first_level_over(width, levels, per_item=1)


def laughs_in_mappings(width: int, levels: int) -> tuple[str, int]:
    """The same with mappings: each level a mapping of ``width`` keys aliasing the level before."""

    def row(n: int, value: str) -> str:
        return f"m{n}: &m{n} {{{', '.join(f'k{i}: {value}' for i in range(width))}}}"

    rows = [row(0, "lol")] + [row(n, f"*m{n - 1}") for n in range(1, levels)]
    return "\n".join(rows) + "\n", _first_level_over(width, levels, per_item=2)


def laughs_in_merges(width: int, levels: int) -> tuple[str, int]:
    """The same through merge keys: each level merges the level before ``width`` times."""
    rows = [f"m0: &m0 {{{', '.join(f'k{i}: lol' for i in range(width))}}}"]
    rows += [f"m{n}: &m{n} {{<<: [{', '.join([f'*m{n - 1}'] * width)}]}}" for n in range(1, levels)]
    sizes = [1 + 2 * width]
    for _ in range(1, levels):
        sizes.append(3 + width * sizes[-1])  # the mapping, <<, its list, what it lists
    return "\n".join(rows) + "\n", 1 + next(n for n, s in enumerate(sizes) if s > MAX_NODES)


def _first_level_over(width: int, levels: int, per_item: int) -> int:
    size = 1 + per_item * width  # level 0: the collection and its items (and keys)
    for n in range(levels):
        if size > MAX_NODES:
            return n + 1
        size = 1 + width * (size + per_item - 1)
    raise AssertionError("this document stays under the node limit")


@pytest.mark.parametrize(
    ("shape", "width", "levels"),
    [
        ("lists", 10, 9),
        ("lists", 2, 40),
        ("lists", 1000, 3),
        ("mappings", 10, 9),
        ("mappings", 3, 30),
        ("merges", 10, 9),
    ],
)
def test_billion_laughs_is_refused_by_the_node_limit(shape: str, width: int, levels: int) -> None:
    build = {"lists": laughs_in_lists, "mappings": laughs_in_mappings, "merges": laughs_in_merges}
    text, line = build[shape](width, levels)
    error = hostile(text)
    assert "node limit" in error.message
    assert str(MAX_NODES) in error.message
    assert error.line == line


def test_laughs_nested_inside_one_flow_collection() -> None:
    # All levels in one line of nested lists: the anchors are defined inside the same document
    # node that repeats them.
    inner = "&a [lol, lol, lol, lol, lol, lol, lol, lol]"
    for name, previous in zip("bcdefgh", "abcdefg", strict=True):
        inner = f"&{name} [{inner}, {', '.join([f'*{previous}'] * 8)}]"
    error = hostile(f"x:\n  - {inner}\n")
    assert "node limit" in error.message
    assert error.line == 2


def test_an_expansion_just_under_the_node_limit_loads() -> None:
    # 4 levels of 10: 11,111 nodes once expanded, the same in the line map.
    text, _ = laughs_in_lists(10, 6)
    text = "\n".join(text.splitlines()[:4]) + "\n"
    data, lines = load(text)
    assert len(data["l3"]) == 10
    assert data["l3"][0][0][0] == ["lol"] * 10
    assert len(lines.lines) > 10_000
    assert lines.line_of(("l3", 9, 9, 9, 9)) == 1  # the scalar where l0 defines it


def test_many_aliases_are_refused_by_the_alias_limit() -> None:
    text = "a: &a x\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    error = hostile(text)
    assert "alias limit" in error.message
    assert str(MAX_ALIASES) in error.message
    assert error.line == 2


@pytest.mark.slow
def test_a_large_flat_document_is_refused_by_the_node_limit() -> None:
    error = hostile("[" + ", ".join(["1"] * (MAX_NODES + 1)) + "]\n")
    assert "node limit" in error.message
    block = "".join(f"key{n}: value\n" for n in range(MAX_NODES // 2 + 1))
    # The root mapping is node 1, so the value on line MAX_NODES / 2 is one node too many.
    assert hostile(block).line == MAX_NODES // 2


@pytest.mark.parametrize(
    "text",
    [
        "a: &a [*a]\n",
        "a: &a {b: *a}\n",
        "a: &a\n  - [x, [y, *a]]\n",
        "a: &a {<<: *a}\n",
        "a: &a\n  b: &b\n    c: *a\n",
    ],
)
def test_an_alias_inside_its_own_anchor_is_refused(text: str, parser: str) -> None:
    error = error_of(text)
    assert "contains the alias itself" in error.message
    assert error.line == line_of(text, "*a")


# --- bounded parsing: nesting -----------------------------------------------------------------


def block_mappings(depth: int) -> str:
    return "".join(f"{'  ' * n}k{n}:\n" for n in range(depth)) + f"{'  ' * depth}leaf\n"


def block_sequences(depth: int) -> str:
    return "".join(f"{'  ' * n}-\n" for n in range(depth)) + f"{'  ' * depth}leaf\n"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), 1),
        ("[" * 100_000 + "]" * 100_000, 1),
        ("[" * 400_000, 1),
        ("{a: " * 100_000 + "b" + "}" * 100_000, 1),
        ("[{a: " * 50_000 + "b" + "}]" * 50_000, 1),
        ("- " * 100_000 + "x\n", 1),
        (block_mappings(MAX_DEPTH + 1), MAX_DEPTH + 1),
        (block_mappings(700), MAX_DEPTH + 1),
        (block_sequences(700), MAX_DEPTH + 1),
        ("a:\n  b:\n    - " + "[" * 200 + "\n", 3),
    ],
    ids=[
        "flow-65",
        "flow-100k",
        "flow-unclosed",
        "flow-mapping",
        "flow-mixed",
        "block-compact-sequences",
        "block-65",
        "block-mappings",
        "block-sequences",
        "after-block",
    ],
)
def test_deep_nesting_is_refused_before_composing(text: str, line: int) -> None:
    error = hostile(text)
    assert "nesting limit" in error.message
    assert str(MAX_DEPTH) in error.message
    assert error.line == line


def test_nesting_at_the_limit_loads(parser: str) -> None:
    data, _ = load("[" * MAX_DEPTH + "x" + "]" * MAX_DEPTH)
    for _ in range(MAX_DEPTH - 1):
        data = data[0]
    assert data == ["x"]
    data, lines = load(block_mappings(MAX_DEPTH - 1))
    assert lines.line_of(tuple(f"k{n}" for n in range(MAX_DEPTH - 1))) == MAX_DEPTH - 1


@pytest.mark.parametrize("length", [MAX_DEPTH + 1, 1_000, 5_000])
def test_a_chain_of_aliases_deeper_than_the_limit_is_refused(length: int) -> None:
    # Each anchor is two levels deep in the text but one level deeper than the last once expanded.
    text = "a0: &a0 [x]\n" + "".join(f"a{n}: &a{n} [*a{n - 1}]\n" for n in range(1, length))
    error = hostile(text)
    assert "nesting limit" in error.message
    assert "alias" in error.message
    assert error.line == MAX_DEPTH + 1  # a64: the first list nested 65 deep


def test_a_chain_of_merges_deeper_than_the_limit_is_refused() -> None:
    text = "m0: &m0 {k: v}\n" + "".join(f"m{n}: &m{n} {{<<: *m{n - 1}}}\n" for n in range(1, 500))
    error = hostile(text)
    assert "nesting limit" in error.message
    assert error.line == MAX_DEPTH + 1


# --- bounded parsing: size and scalars --------------------------------------------------------


def test_text_over_the_size_limit_is_refused_before_parsing() -> None:
    error = hostile(b"a: [" + b"1," * (MAX_BYTES // 2) + b"]")
    assert "size limit" in error.message
    assert "1 MiB" in error.message
    assert error.line is None


def test_text_at_the_size_limit_loads() -> None:
    line = b"# " + b"x" * 97 + b"\n"
    text = line * (MAX_BYTES // len(line)) + b"a: 1\n"
    text += b" " * (MAX_BYTES - len(text))
    assert len(text) == MAX_BYTES
    assert load(text)[0] == {"a": 1}


def test_a_huge_file_is_read_no_further_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "hxp.yml"
    with path.open("wb") as sparse:
        sparse.truncate(512 * MAX_BYTES)
    start = time.process_time()
    tracemalloc.start()
    try:
        with pytest.raises(YamlSourceError) as caught:
            load_yaml(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.process_time() - start < SECONDS
    assert peak < 3 * MAX_BYTES
    assert "size limit" in caught.value.message


@pytest.mark.parametrize(
    "scalar",
    [
        "1" + ":1" * 300_000,  # base-60 integer: quadratic to convert
        "1" + ":1" * 300_000 + ".5",  # base-60 float
        "1_" * 400_000 + "1",
        "0b" + "1" * 900_000,
        "x" * 1_000_000,
    ],
    ids=["sexagesimal-int", "sexagesimal-float", "underscores", "binary", "plain"],
)
def test_a_long_plain_scalar_is_a_string(scalar: str) -> None:
    text = f"a: {scalar}\n"
    start = time.process_time()
    data, _ = load(text)
    elapsed = time.process_time() - start
    assert data == {"a": scalar}
    assert elapsed < SECONDS
    tracemalloc.start()
    try:
        load(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES


def test_numbers_up_to_the_length_limit_are_numbers(parser: str) -> None:
    digits = "9" * MAX_NUMBER_CHARS
    data, _ = load(f"a: {digits}\nb: 1:30:00\nc: 0x1F\nd: 1.5e+3\ne: true\n")
    assert data == {"a": int(digits), "b": 5400, "c": 31, "d": 1500.0, "e": True}
    assert load(f"a: {digits}9\n")[0] == {"a": digits + "9"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nwhen: 2024-02-30\n", "'2024-02-30' cannot be read as timestamp"),
        ("a: 1\nn: !!int ''\n", "cannot be read as int"),
        ("a: 1\nn: !!int twelve\n", "'twelve' cannot be read as int"),
        ("a: 1\nn: !!float lots\n", "'lots' cannot be read as float"),
        ("a: 1\nb: !!bool maybe\n", "'maybe' cannot be read as bool"),
        ("a: 1\nt: !!timestamp soon\n", "'soon' cannot be read as timestamp"),
        ("a: 1\nn: !!int " + "1:" * 200 + "1\n", "number length limit"),
        ("a: 1\nn: !!int '" + "7" * 5000 + "'\n", "number length limit"),
        ("a: 1\nb: !!binary 'A'\n", "failed to decode base64"),
        ("a: 1\nb: !shell ls\n", "could not determine a constructor for the tag '!shell'"),
        ("a: 1\nb: !!python/object:os.system {}\n", "could not determine a constructor"),
        ("a: 1\nb: !!str [x]\n", "expected a scalar node"),
    ],
)
def test_odd_scalars_are_errors_on_their_line(text: str, expected: str, parser: str) -> None:
    error = error_of(text)
    assert expected in error.message
    assert error.line == 2


@pytest.mark.parametrize("text", ["? [a, b]\n: 1\n", "? {a: 1}\n: 2\n", "x: 1\n[a]: 2\n"])
def test_a_list_or_mapping_as_a_key_is_an_error(text: str, parser: str) -> None:
    error = error_of(text)
    assert "mapping key must be a string or a number" in error.message
    assert error.line == (2 if text.startswith("x") else 1)


def test_the_recursion_net_turns_a_short_stack_into_an_error() -> None:
    # The limits assume an ordinary stack below the loader; a caller that is already deep gets
    # an error, not a RecursionError.
    depth = 0
    frame = sys._getframe()
    while frame.f_back is not None:
        depth, frame = depth + 1, frame.f_back
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 60)
    try:
        with pytest.raises(YamlSourceError) as caught:
            load("[" * 40 + "]" * 40)
    finally:
        sys.setrecursionlimit(old)
    assert "RecursionError" in caught.value.message


# --- merge keys and duplicate keys ------------------------------------------------------------

MERGES = """\
x-base: &base
  dtype: float16
  max_model_len: 4096
x-big: &big
  max_model_len: 32768
  swap: 4
single:
  <<: *base
  name: one
override:
  <<: *base
  dtype: bfloat16
listed:
  <<: [*big, *base]
  name: three
listed-override:
  <<: [*base, *big]
  swap: 8
nested:
  <<: &derived
    <<: *base
    dtype: fp8
  name: four
inline:
  <<: {dtype: int8, extra: 1}
  extra: 2
models:
  - <<: *derived
    name: five
"""


def test_merge_keys_apply_with_yaml_precedence(parser: str) -> None:
    data, _ = load(MERGES)
    base = {"dtype": "float16", "max_model_len": 4096}
    assert data["single"] == {**base, "name": "one"}
    assert data["override"] == {**base, "dtype": "bfloat16"}
    # Of merged mappings the first listed wins; keys written in the mapping win over all.
    assert data["listed"] == {
        "dtype": "float16",
        "max_model_len": 32768,
        "swap": 4,
        "name": "three",
    }
    assert data["listed-override"] == {**base, "swap": 8}
    assert data["nested"] == {**base, "dtype": "fp8", "name": "four"}
    assert data["inline"] == {"dtype": "int8", "extra": 2}
    assert data["models"] == [{**base, "dtype": "fp8", "name": "five"}]
    assert data == yaml.safe_load(MERGES)  # the same data as PyYAML's own loader


def test_merged_keys_have_their_definition_lines(parser: str) -> None:
    _, lines = load(MERGES)
    at = lines.line_of
    assert at(("single", "dtype")) == line_of(MERGES, "dtype: float16")
    assert at(("single", "name")) == line_of(MERGES, "name: one")
    assert at(("override", "dtype")) == line_of(MERGES, "dtype: bfloat16")
    assert at(("override", "max_model_len")) == line_of(MERGES, "max_model_len: 4096")
    assert at(("listed", "max_model_len")) == line_of(MERGES, "max_model_len: 32768")
    assert at(("listed-override", "swap")) == line_of(MERGES, "swap: 8")
    assert at(("nested", "dtype")) == line_of(MERGES, "dtype: fp8")
    assert at(("inline", "extra")) == line_of(MERGES, "extra: 2")
    assert at(("inline", "dtype")) == line_of(MERGES, "dtype: int8")
    assert at(("models", 0)) == line_of(MERGES, "- <<: *derived")
    assert at(("models", 0, "dtype")) == line_of(MERGES, "dtype: fp8")
    assert at(("models", 0, "max_model_len")) == line_of(MERGES, "max_model_len: 4096")


@pytest.mark.parametrize(
    "text",
    [
        "a: &a 1\nb:\n  <<: *a\n",
        "a: &a [x]\nb:\n  <<: *a\n",
        "a: &a {x: 1}\nb:\n  <<: [*a, 2]\n",
        "b:\n  <<: plain\n",
    ],
)
def test_a_merge_of_something_other_than_mappings_is_an_error(text: str, parser: str) -> None:
    error = error_of(text)
    assert "merge key (<<) takes a mapping" in error.message
    assert error.line == line_of(text, "<<")


@pytest.mark.parametrize(
    ("text", "key", "second"),
    [
        ("name: unit\nport: 1\nname: again\n", "'name'", "name: again"),
        ("hosts:\n  - name: a\n    addr: x\n    addr: y\n", "'addr'", "addr: y"),
        ("a: {x: 1, y: 2,\n    x: 3}\n", "'x'", "x: 3"),
        ("b: &b {x: 1}\nc:\n  <<: *b\n  x: 2\n  x: 3\n", "'x'", "x: 3"),
        ("a: 1\n'a': 2\n", "'a'", "'a': 2"),
        ("1: one\n0x1: also one\n", "1", "0x1"),
    ],
)
def test_a_key_written_twice_is_an_error_on_its_second_line(
    text: str, key: str, second: str, parser: str
) -> None:
    error = error_of(text)
    assert f"duplicate key {key}" in error.message
    assert error.line == line_of(text, second)


# --- lines point at the offending token -------------------------------------------------------

ALIASES = """\
x-base: &base
  dtype: float16
  engine:
    swap: 4
models:
  - *base
  - name: own
  -
    *base
pair: [*base,
  *base]
same:
  *base
"""


def test_an_alias_use_has_the_alias_line(parser: str) -> None:
    _, lines = load(ALIASES)
    at = lines.line_of
    assert at(("models", 0)) == line_of(ALIASES, "- *base")
    assert at(("models", 1)) == line_of(ALIASES, "- name: own")
    assert at(("models", 2)) == line_of(ALIASES, "    *base")
    assert at(("pair", 0)) == line_of(ALIASES, "pair:")
    assert at(("pair", 1)) == line_of(ALIASES, "  *base]")
    # Inside the repeated value, lines are where the anchor defines it.
    assert at(("models", 0, "dtype")) == line_of(ALIASES, "dtype: float16")
    assert at(("models", 2, "engine", "swap")) == line_of(ALIASES, "swap: 4")
    # A mapping value's path is the line of its key.
    assert at(("same",)) == line_of(ALIASES, "same:")


def test_items_and_keys_have_their_own_lines(parser: str) -> None:
    text = "a:\n  - x\n  - y\n  - [p,\n     q]\nb: {c: 1,\n    d: 2}\n"
    _, lines = load(text)
    assert lines.lines == {
        (): 1,
        ("a",): 1,
        ("a", 0): 2,
        ("a", 1): 3,
        ("a", 2): 4,
        ("a", 2, 0): 4,
        ("a", 2, 1): 5,
        ("b",): 6,
        ("b", "c"): 6,
        ("b", "d"): 7,
    }
    assert lines.line_of(("a", 2, 1, "deeper")) == 5
    assert lines.line_of(("nowhere",)) == 1


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: *nope\n", 2),
        ("a: 1\nb:\n  - ok\n  - *nope\n", 4),
        ("a: 1\n*nope : 2\n", 2),
        ("a: [1, 2,\n    *nope]\n", 2),
        ("a: *nope\nb: &nope 1\n", 1),  # an anchor serves only the aliases after it
    ],
)
def test_an_unknown_alias_is_an_error_on_its_line(text: str, line: int, parser: str) -> None:
    error = error_of(text)
    assert "alias 'nope' refers to no anchor" in error.message
    assert error.line == line


@pytest.mark.parametrize(
    ("text", "opening"),
    [
        ('name: unit\nmodels:\n  - name: "phi3\n    port: 1\n  - name: x\n', '"phi3'),
        ("name: unit\nmodels:\n  - name: 'phi3\n    port: 1\n  - name: x\n", "'phi3"),
        ('a: 1\nb: "never closed', '"never'),
        ("a: 1\nb: 'it''s never closed\n\n\n", "'it''s"),
        ("a: 1\nb: [x,\n  y\n", "[x,"),
        ("a: 1\nb: {x: 1,\n  y: 2\n", "{x: 1,"),
    ],
)
def test_an_unclosed_quote_or_bracket_points_where_it_opens(
    text: str, opening: str, parser: str
) -> None:
    error = error_of(text)
    assert "YAML syntax error" in error.message
    assert "still open at the end of the input" in error.message
    assert error.line == line_of(text, opening)
    column = text.splitlines()[error.line - 1].index(opening) + 1
    assert f"(column {column})" in error.message


def test_other_syntax_errors_point_at_the_problem(parser: str) -> None:
    text = "a: 1\nb:\n  c: 1\n d: 2\ne: 3\n"
    error = error_of(text)
    assert "YAML syntax error" in error.message
    assert error.line == line_of(text, " d: 2")
    error = error_of("a: 1\n---\nb: 2\n")
    assert "expected a single document" in error.message
    assert error.line == 2


# --- encoding and characters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "offset", "line"),
    [
        (b"\xffa: 1\n", 0, 1),
        (b"a: 1\nb: caf\xe9\nc: 2\n", 11, 2),
        (b"a: 1\r\nb: 2\r\n# \x80\r\n", 14, 3),
        (b"a: 1\nb: 2\n" + b"\xc3", 10, 3),  # a multi-byte sequence cut off at the end
        (b"\xff\xfea\x00:\x00", 0, 1),  # UTF-16
        (b"a: \xed\xa0\x80\n", 3, 1),  # an encoded surrogate
    ],
)
def test_bytes_that_are_not_utf8_are_named_with_offset_and_line(
    raw: bytes, offset: int, line: int
) -> None:
    error = hostile(raw)
    assert f"not valid UTF-8 at byte offset {offset} (byte 0x{raw[offset]:02X})" in error.message
    assert "save the file as UTF-8" in error.message
    assert error.line == line


@pytest.mark.parametrize(
    ("text", "code", "line", "column"),
    [
        ("a: 1\nb: x\x00y\n", "0000", 2, 5),
        ("\x00", "0000", 1, 1),
        ("a: 1\n\nb: '\x07'\n", "0007", 3, 5),
        ("a: 1\n# \x1b[31m red\n", "001B", 2, 3),
        ("a: 1\nb: \ufffe\n", "FFFE", 2, 4),
    ],
)
def test_characters_yaml_forbids_are_named_with_line(
    text: str, code: str, line: int, column: int, parser: str
) -> None:
    error = error_of(text)
    assert f"YAML error (column {column}): character U+{code} is not allowed" in error.message
    assert error.line == line


def test_utf8_text_with_a_byte_order_mark_loads(parser: str) -> None:
    data, lines = load("\ufeffname: café\nport: 1\n".encode())
    assert data == {"name": "café", "port": 1}
    assert lines.line_of(("port",)) == 2


# --- files and stdin --------------------------------------------------------------------------


def test_a_file_and_its_text_from_stdin_load_alike(tmp_path: Path) -> None:
    path = tmp_path / "hxp.yml"
    path.write_text(ALIASES)
    from_file = load_yaml(path)
    from_stdin = load_yaml(Path("<stdin>"), text=ALIASES.encode())
    assert from_file[0] == from_stdin[0]
    assert from_file[1].lines == from_stdin[1].lines
    assert from_stdin[1].file == Path("<stdin>")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(YamlSourceError, match="is a directory"):
        load_yaml(tmp_path)
    with pytest.raises(YamlSourceError, match="file not found"):
        load_yaml(tmp_path / "absent.yml")
    # With text the path only names the input; it is not read.
    assert load_yaml(tmp_path, text=b"a: 1\n")[0] == {"a": 1}


@pytest.mark.parametrize("text", [b"", b"# only a comment\n", b"---\n", b"\n\n", b"~\n"])
def test_an_empty_document_is_none(text: bytes, parser: str) -> None:
    assert load(text)[0] is None


@pytest.mark.parametrize("sample", ["sample", "lab"])
def test_the_inventories_load_as_pyyaml_loads_them(sample: str, parser: str) -> None:
    path = REPO / "inventory" / sample / "hxp.yml"
    data, lines = load_yaml(path)
    assert data == yaml.safe_load(path.read_text())
    rows = path.read_text().splitlines()
    for index, model in enumerate(data["models"]):
        line = lines.line_of(("models", index, "name"))
        assert line is not None
        assert f"name: {model['name']}" in rows[line - 1]


# --- both parsers say the same ----------------------------------------------------------------

PARITY: list[str | bytes] = [
    laughs_in_lists(10, 9)[0],
    laughs_in_mappings(10, 9)[0],
    "a0: &a0 [x]\n" + "".join(f"a{n}: &a{n} [*a{n - 1}]\n" for n in range(1, 100)),
    "[" * 100 + "]" * 100,
    block_mappings(100),
    "a: &a [*a]\n",
    "a: 1\nb: *nope\n",
    'a: 1\nb: "open\n\n',
    b"a: 1\nb: \xff\n",
    "a: 1\nb: \x00\n",
    "a: 1\nb: 2\na: 3\n",
    MERGES,
    ALIASES,
]


@pytest.mark.skipif(len(PARSERS) < 2, reason="PyYAML was built without libyaml")
@pytest.mark.parametrize("text", PARITY)
def test_both_parsers_give_the_same_result(
    text: str | bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def outcome(parser: str) -> object:
        monkeypatch.setattr(yamlsource, "_Loader", getattr(yamlsource, parser))
        try:
            data, lines = load(text)
        except YamlSourceError as exc:
            return exc.message, exc.line
        return data, lines.lines

    first, second = (outcome(name) for name in PARSERS)
    assert first == second


def test_no_input_raises_anything_but_yaml_source_error(parser: str) -> None:
    # Mutations of a valid file: every cut, and every byte swapped for a troublesome one.
    base = MERGES.encode()
    cuts = [base[:n] for n in range(0, len(base), 7)]
    swaps = [
        base[:n] + bad + base[n + 1 :]
        for n in range(0, len(base), 11)
        for bad in (b"\x00", b"\xff", b'"', b"[", b"*", b"&", b"!", b"<", b"?", b":", b"\t")
    ]
    for text in cuts + swaps:
        with contextlib.suppress(YamlSourceError):
            load(text)
