"""YAML loading that remembers where every value came from.

pydantic reports an error at a path such as ``("models", 2, "engine", "dtype")``; the
:class:`LineMap` built here turns that path back into the line of the file, so every error a
user sees names the file and the line.

hxp.yml is untrusted input. Loading is bounded by the limits below, each checked before the work
it guards can grow (the file is read at most one byte past MAX_BYTES; nesting is checked before
the recursive composer descends; alias expansion is counted on the composed graph, never by
expanding), and every way a file can be wrong ends as a YamlSourceError with a line.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.reader import Reader
from yaml.resolver import BaseResolver, Resolver

PathKey = tuple[str | int, ...]

# An hxp file is a few kilobytes and a few hundred nodes (inventory/sample/hxp.yml: 4 KB, 345
# nodes). The limits leave room for fifty times that, and a file over them is refused within
# about a tenth of a second and 10 MB on a quiet machine (benchmarks/config_limits.py).
MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 20_000
MAX_ALIASES = 10_000
# Numbers, booleans and dates are short. YAML 1.1's number patterns use memory in proportion to
# the scalar they are matched against, and PyYAML converts a base-60 integer (1:30:00) in time
# quadratic in its length, so a longer plain scalar is a string and a longer !!int an error.
MAX_NUMBER_CHARS = 100

_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"
_COLLECTION = (yaml.SequenceNode, yaml.MappingNode)

# A place in a collection: the collection and the index there (a position in a sequence, the
# key node of a mapping value, None for a mapping key).
_Slot = tuple[yaml.Node, int | yaml.Node | None]
# A mapping's keys once merge keys are applied, each with the key node and value node behind it.
_Entries = dict[Hashable, tuple[yaml.Node, yaml.Node]]


class YamlSourceError(Exception):
    """The file cannot be read or is not valid YAML; the message says where and why."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class LineMap:
    """Maps a path of keys/indices inside the document to its 1-based line number."""

    file: Path
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: PathKey) -> int | None:
        """Line of ``path``, or of its nearest ancestor that appears in the file."""
        probe = tuple(path)
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            probe = probe[:-1]
        return self.lines.get((), None)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _BoundedLoader(Composer, SafeConstructor, Resolver):
    """Composes one document within the limits, then constructs it with merge keys applied
    and literal duplicate keys rejected; a subclass brings the parser."""

    if TYPE_CHECKING:  # provided by the parser the subclass brings

        def peek_event(self) -> Any: ...
        def dispose(self) -> None: ...

    def start_bounds(self) -> None:
        # CSafeLoader composes in C and so never sets up the Python composer used here.
        Composer.__init__(self)
        self.depth = 0
        self.node_count = 0
        self.alias_count = 0
        self.alias_lines: dict[_Slot, int] = {}
        self.mapping_entries: dict[yaml.Node, _Entries] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        line = int(event.start_mark.line) + 1
        if isinstance(event, yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_ALIASES:
                raise YamlSourceError(
                    f"more than {MAX_ALIASES} aliases, the alias limit; an hxp file needs far "
                    "fewer: write the repeated values out or share them with fewer aliases",
                    line,
                )
            if event.anchor not in self.anchors:
                raise YamlSourceError(
                    f"alias {reprlib.repr(event.anchor)} refers to no anchor; define the anchor "
                    "(&name) on a value before the alias, or fix the alias's spelling",
                    line,
                )
            if parent is not None and index is not None:
                self.alias_lines[(parent, index)] = line
            return super().compose_node(parent, index)
        self.node_count += 1
        if self.node_count > MAX_NODES:
            raise YamlSourceError(
                f"more than {MAX_NODES} values, the node limit; an hxp file is far smaller: "
                "check that this is the right file",
                line,
            )
        if not isinstance(event, yaml.CollectionStartEvent):
            return super().compose_node(parent, index)
        # PyYAML's composer recurses once per level, so the limit is checked before descending.
        if self.depth >= MAX_DEPTH:
            raise YamlSourceError(
                f"lists and mappings nest more than {MAX_DEPTH} levels deep, the nesting limit; "
                "flatten the structure",
                line,
            )
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        return node

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> str:
        # See MAX_NUMBER_CHARS: a long plain scalar is never matched against the patterns.
        if kind is yaml.ScalarNode and implicit[0] and len(value) > MAX_NUMBER_CHARS:
            return BaseResolver.DEFAULT_SCALAR_TAG
        return super().resolve(kind, value, implicit)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
            # A plain 2024-02-30 matches the date pattern but not the calendar, and PyYAML's
            # converters fail in these ways on explicitly tagged values (!!int "", !!bool maybe).
            shown = f" {reprlib.repr(node.value)}" if isinstance(node, yaml.ScalarNode) else ""
            raise YamlSourceError(
                f"the value{shown} cannot be read as {node.tag.rsplit(':', 1)[-1]}: {exc}; "
                "quote it to keep it a string, or correct it",
                _line(node),
            ) from None

    def entries_of(self, node: yaml.MappingNode) -> _Entries:
        """The keys of ``node`` with merge keys applied, each with its key and value node."""
        known = self.mapping_entries.get(node)
        if known is not None:
            return known
        merged: _Entries = {}
        written: _Entries = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                for source in _merge_sources(key_node, value_node):
                    for key, entry in self.entries_of(source).items():
                        # Of several merged mappings the first listed wins (YAML merge key spec).
                        merged.setdefault(key, entry)
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in written
            except TypeError:
                raise YamlSourceError(
                    "a mapping key must be a string or a number, not a list or mapping; "
                    "write a plain key",
                    _line(key_node),
                ) from None
            if seen:
                raise YamlSourceError(
                    f"duplicate key {reprlib.repr(key)}; a key may appear once in a mapping: "
                    "remove or rename one of them",
                    _line(key_node),
                )
            written[key] = (key_node, value_node)
        # A key written in the mapping itself overrides the same key brought in by a merge.
        entries = merged | written
        self.mapping_entries[node] = entries
        return entries

    def construct_merged_mapping(self, node: yaml.MappingNode) -> dict[Any, Any]:
        # Replaces PyYAML's, which flattens merge keys into the node (shared by every alias of
        # it) and lets the later of two equal keys win without a word.
        return {
            key: self.construct_object(value_node, deep=True)
            for key, (_, value_node) in self.entries_of(node).items()
        }

    def construct_bounded_integer(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > MAX_NUMBER_CHARS:
            raise YamlSourceError(
                f"an integer longer than {MAX_NUMBER_CHARS} characters, the number length "
                "limit; write a shorter number, or drop the !!int tag to keep it a string",
                _line(node),
            )
        return self.construct_yaml_int(node)

    yaml_constructors: ClassVar[dict[str | None, Any]] = {
        **SafeConstructor.yaml_constructors,
        BaseResolver.DEFAULT_MAPPING_TAG: construct_merged_mapping,
        _INT_TAG: construct_bounded_integer,
    }


def _merge_sources(key_node: yaml.Node, value_node: yaml.Node) -> list[yaml.MappingNode]:
    sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
    if not all(
        isinstance(s, yaml.MappingNode) and s.tag == BaseResolver.DEFAULT_MAPPING_TAG
        for s in sources
    ):
        raise YamlSourceError(
            "a merge key (<<) takes a mapping or a list of mappings, such as <<: *defaults or "
            "<<: [*a, *b]; point it at mappings",
            _line(key_node),
        )
    return list(sources)


class _PythonLoader(_BoundedLoader, yaml.SafeLoader):
    def __init__(self, content: str) -> None:
        yaml.SafeLoader.__init__(self, content)
        self.start_bounds()


_Loader: Callable[[str], _BoundedLoader] = _PythonLoader
if yaml.__with_libyaml__:
    # libyaml's parser is about three times faster than PyYAML's own, which the limits are sized
    # for; the composer and constructor above stay PyYAML's Python ones either way.
    class _LibyamlLoader(_BoundedLoader, yaml.CSafeLoader):
        def __init__(self, content: str) -> None:
            yaml.CSafeLoader.__init__(self, content)
            self.start_bounds()

    _Loader = _LibyamlLoader


def _collections_under(node: yaml.Node) -> list[tuple[yaml.Node, _Slot]]:
    """The lists and mappings directly under ``node``, each with its place there."""
    places: list[tuple[yaml.Node, _Slot]]
    if isinstance(node, yaml.SequenceNode):
        places = [(child, (node, index)) for index, child in enumerate(node.value)]
    elif isinstance(node, yaml.MappingNode):
        places = [
            place
            for key, value in node.value
            for place in ((key, (node, None)), (value, (node, key)))
        ]
    else:
        return []
    return [(child, place) for child, place in places if isinstance(child, _COLLECTION)]


def _check_expansion(root: yaml.Node, alias_lines: dict[_Slot, int]) -> None:
    """Reject aliases that expand the document past MAX_NODES or MAX_DEPTH, or into itself.

    Each collection is measured once and its size reused wherever an alias repeats it, so a
    billion laughs costs as much as its text; the walk keeps its own stack, so alias chains
    cannot exhaust Python's. A scalar counts one node and no depth.
    """
    sizes: dict[yaml.Node, int] = {}
    depths: dict[yaml.Node, int] = {}
    open_nodes: set[yaml.Node] = set()
    stack: list[tuple[yaml.Node, _Slot | None, bool]] = [(root, None, False)]
    while stack:
        node, slot, children_measured = stack.pop()
        if children_measured:
            open_nodes.discard(node)
            children = _collections_under(node)
            under = len(node.value) * (2 if isinstance(node, yaml.MappingNode) else 1)
            scalars = under - len(children)
            sizes[node] = 1 + scalars + sum(sizes[c] for c, _ in children)
            depths[node] = 1 + max((depths[c] for c, _ in children), default=0)
            if sizes[node] > MAX_NODES:
                raise YamlSourceError(
                    f"the aliases here expand to more than {MAX_NODES} values, the node limit "
                    "(counted with every alias expanded); repeat less, or write values out",
                    _line(node),
                )
            if depths[node] > MAX_DEPTH:
                raise YamlSourceError(
                    f"the aliases here nest lists and mappings more than {MAX_DEPTH} levels "
                    "deep, the nesting limit (counted with every alias expanded); shorten the "
                    "chain of aliases",
                    _line(node),
                )
        elif node in open_nodes:
            line = alias_lines.get(slot) if slot is not None else None
            raise YamlSourceError(
                "this alias repeats a list or mapping that contains the alias itself, which "
                "never ends; an alias may only repeat a value that is complete before it",
                line if line is not None else _line(node),
            )
        elif node not in sizes and isinstance(node, _COLLECTION):
            open_nodes.add(node)
            stack.append((node, slot, True))
            stack.extend((child, place, False) for child, place in _collections_under(node))


def _path_key(key: Hashable) -> str | int:
    return key if isinstance(key, str | int) else str(key)


def _index_lines(root: yaml.Node, loader: _BoundedLoader) -> dict[PathKey, int]:
    """The line of every path in the document, aliases expanded (at most MAX_NODES paths, as
    _check_expansion made sure); a value given by an alias gets the alias's line."""
    lines: dict[PathKey, int] = {}
    stack: list[tuple[PathKey, yaml.Node, int]] = [((), root, _line(root))]
    while stack:
        path, node, line = stack.pop()
        lines[path] = line
        if isinstance(node, yaml.SequenceNode):
            stack.extend(
                ((*path, index), item, loader.alias_lines.get((node, index), _line(item)))
                for index, item in enumerate(node.value)
            )
        elif isinstance(node, yaml.MappingNode):
            # An error about a key (unknown, missing child) points at the key's own line; a key
            # from a merge has its line where the merged mapping defines it.
            stack.extend(
                ((*path, _path_key(key)), value_node, _line(key_node))
                for key, (key_node, value_node) in loader.mapping_entries.get(node, {}).items()
            )
    return lines


def _read_bounded(file: Path) -> bytes:
    try:
        with file.open("rb") as stream:
            # One byte past the limit tells an oversized file apart without reading all of it.
            return stream.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise YamlSourceError("file not found; check the path") from None
    except IsADirectoryError:
        raise YamlSourceError("is a directory; give the path of a YAML file") from None
    except OSError as exc:
        raise YamlSourceError(
            f"cannot read: {exc.strerror or exc}; check the path and its permissions"
        ) from None


def _check_size(raw: bytes) -> None:
    if len(raw) > MAX_BYTES:
        raise YamlSourceError(
            f"larger than {MAX_BYTES // (1024 * 1024)} MiB, the size limit; an hxp file is a few "
            "kilobytes: check that this is the right file"
        )


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlSourceError(
            f"not valid UTF-8 at byte offset {exc.start} (byte 0x{raw[exc.start]:02X}); "
            "save the file as UTF-8",
            raw.count(b"\n", 0, exc.start) + 1,
        ) from None


def _check_printable(content: str) -> None:
    bad = Reader.NON_PRINTABLE.search(content)
    if bad is None:
        return
    line_start = content.rfind("\n", 0, bad.start()) + 1
    code = ord(bad.group())
    raise YamlSourceError(
        f"YAML error (column {bad.start() - line_start + 1}): character U+{code:04X} is not "
        f'allowed in YAML; delete it, or write it as "\\u{code:04X}" inside a double-quoted string',
        content.count("\n", 0, bad.start()) + 1,
    )


def _marked_error(exc: yaml.MarkedYAMLError, content: str) -> YamlSourceError:
    mark, advice = exc.problem_mark, "fix the YAML"
    # A quote or bracket left open is noticed at the end of the input, but fixed where it opens.
    if exc.context_mark is not None and (mark is None or not content[mark.index :].strip()):
        mark = exc.context_mark
        advice = "it starts here and is still open at the end of the input: close or complete it"
    kind = (
        "YAML syntax error"
        if isinstance(exc, yaml.scanner.ScannerError | yaml.parser.ParserError)
        else "YAML error"
    )
    column = f" (column {mark.column + 1})" if mark is not None else ""
    problem = ", ".join(p for p in (exc.context, exc.problem) if p)
    return YamlSourceError(
        f"{kind}{column}: {problem}; {advice}", mark.line + 1 if mark is not None else None
    )


def load_yaml(file: Path, *, text: bytes | None = None) -> tuple[Any, LineMap]:
    """Parse ``file`` (or ``text``, its content, e.g. from stdin) and return its data with a
    line map; raise YamlSourceError on failure, never anything else."""
    raw = _read_bounded(file) if text is None else text
    _check_size(raw)
    content = _decode(raw)
    _check_printable(content)
    loader = _Loader(content)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, LineMap(file=file)
        _check_expansion(root, loader.alias_lines)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        raise _marked_error(exc, content) from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(f"YAML error: {' '.join(str(exc).split())}; fix the YAML") from None
    except (RecursionError, MemoryError) as exc:
        # The limits keep the parser a few hundred frames deep, but the caller's own stack
        # depth and the machine's memory are outside them.
        raise YamlSourceError(
            f"too large or too deeply nested to load here ({type(exc).__name__}); simplify the file"
        ) from None
    finally:
        loader.dispose()
    return data, LineMap(file=file, lines=_index_lines(root, loader))
