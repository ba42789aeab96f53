"""YAML loading that remembers where every key and item came from, so errors can name a line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

Path = tuple[str | int, ...]


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


class LineIndex:
    """Maps a path inside the document (('services', 'web', 'checks', 0, 'interval')) to a 1-based line."""

    def __init__(self) -> None:
        self._lines: dict[Path, int] = {}

    def add(self, path: Path, line: int) -> None:
        self._lines.setdefault(path, line)

    def line(self, path: Sequence[str | int]) -> int | None:
        """The line of the longest known prefix of `path`."""
        p = tuple(path)
        while p:
            if p in self._lines:
                return self._lines[p]
            p = p[:-1]
        return self._lines.get((), None)

    def shifted(self, prefix: Path) -> LineIndex:
        """The sub-index below `prefix`, with paths relative to it."""
        sub = LineIndex()
        n = len(prefix)
        for path, line in self._lines.items():
            if path[:n] == prefix:
                sub._lines[path[n:]] = line
        return sub


def _walk(node: yaml.Node, path: Path, index: LineIndex) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            index.add((*path, key), key_node.start_mark.line + 1)
            _walk(value_node, (*path, key), index)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index.add((*path, i), item.start_mark.line + 1)
            _walk(item, (*path, i), index)


def load(text: str) -> tuple[Any, LineIndex]:
    """Parse YAML text (safe subset) into plain data plus the line index of every key and item."""
    index = LineIndex()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise YamlSyntaxError(f"{exc.problem or exc.context or 'invalid YAML'}", line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc), None) from None
    if node is not None:
        index.add((), node.start_mark.line + 1)
        _walk(node, (), index)
    return data, index
