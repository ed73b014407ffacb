"""YAML loading that remembers where every value came from.

pydantic reports an error at a path such as ``("models", 2, "engine", "dtype")``; the
:class:`LineMap` built here turns that path back into the line of the file, so every error a
user sees names the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PathKey = tuple[str | int, ...]


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _index_lines(node: yaml.Node, path: PathKey, lines: dict[PathKey, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*path, key)
            _index_lines(value_node, child, lines)
            # An error about a key (unknown, missing child) points at the key's own line.
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), lines)


def load_yaml(file: Path, *, text: bytes | None = None) -> tuple[Any, LineMap]:
    """Parse ``file`` (or ``text``, its content, e.g. from stdin) and return its data with a
    line map; raise YamlSourceError on failure."""
    try:
        content = text.decode("utf-8") if text is not None else file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlSourceError("file not found; check the path") from None
    except IsADirectoryError:
        raise YamlSourceError("is a directory; give the path of a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise YamlSourceError(f"cannot read: {exc}") from None
    try:
        node = yaml.compose(content, Loader=_UniqueKeyLoader)
        data = yaml.load(content, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        column = f" (column {mark.column + 1})" if mark else ""
        raise YamlSourceError(
            f"YAML syntax error{column}: {problem}; fix the YAML",
            mark.line + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise YamlSourceError(f"YAML error: {exc}") from None
    lines: dict[PathKey, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return data, LineMap(file=file, lines=lines)
