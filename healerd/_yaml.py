"""YAML loading that remembers where every key and item came from, so errors can name a line.

It also keeps hostile or mistaken documents small and unambiguous: a size cap, bounded nesting and alias
expansion (a "billion laughs" document is refused while composing, before it grows), and a key written
twice in one mapping is an error instead of the last one silently winning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

#: a config or playbook is a few KiB; more is a mistake (or an attack), not a fleet
MAX_BYTES = 4 * 1024 * 1024
#: nodes that aliases (`*name`) may add to a document, counted as if every alias were written out
MAX_ALIAS_NODES = 100_000
#: mappings and lists inside each other; a config needs about eight
MAX_DEPTH = 64

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
#: what YAML reads an unquoted key as, in words
_READ_AS = {
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
}


class YamlSyntaxError(ValueError):
    """A document that cannot be used as written; `line` is the first problem's, `problems` lists them all."""

    def __init__(self, message: str, line: int | None, problems: Sequence[YamlProblem] = ()) -> None:
        super().__init__(message)
        self.line = line
        self.problems = tuple(problems) or (YamlProblem((), message, line),)


@dataclass(frozen=True)
class YamlProblem:
    path: Path
    message: str
    line: int | None


@dataclass(frozen=True)
class OddKey:
    """A mapping key that YAML read as something other than a string (`123:`, `true:`, `~:`)."""

    path: Path  # of the mapping holding it
    text: str  # as written
    read_as: str  # "a number", "a boolean", ...
    line: int


def format_path(path: Path) -> str:
    """A path inside a document as a reader writes it: services.web.checks[0].interval."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def size_text(n: int) -> str:
    """4 MiB, 5.2 MiB, 64 KiB."""
    value, unit = (n / (1024 * 1024), "MiB") if n >= 1024 * 1024 else (n / 1024, "KiB")
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


class LineIndex:
    """Maps a path inside the document (('services', 'web', 'checks', 0, 'interval')) to a 1-based line."""

    def __init__(self) -> None:
        self._lines: dict[Path, int] = {}
        #: keys that are not strings, for the caller to judge (a service name must be one; a status code may not)
        self.odd_keys: list[OddKey] = []

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


@dataclass
class Document:
    data: Any
    index: LineIndex
    #: keys written twice in one mapping (the document is still read: the caller lists them with the rest)
    problems: list[YamlProblem] = field(default_factory=list)


class _LimitError(yaml.MarkedYAMLError):
    """The document is valid YAML but too big or too deep to be a config."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts while composing: nesting depth and the nodes aliases would add if written out.

    An alias is a reference to an already composed node, so its expanded size is known the moment it is
    used; the running total is refused past MAX_ALIAS_NODES long before anything is expanded."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, its aliases expanded
        self._aliased = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event: Any = self.peek_event()  # type: ignore[no-untyped-call]
            target = self.anchors.get(event.anchor)
            if target is not None:
                if id(target) not in self._sizes:
                    raise _LimitError(
                        None,
                        None,
                        f"alias *{event.anchor} is used inside the node it names; a config cannot contain itself",
                        event.start_mark,
                    )
                self._aliased += self._sizes[id(target)]
                if self._aliased > MAX_ALIAS_NODES:
                    raise _LimitError(
                        None,
                        None,
                        f"aliases (*name) expand this document to more than {MAX_ALIAS_NODES:,} nodes, far more "
                        f"than any config needs (a 'billion laughs' document?); write the repeated parts out or "
                        f"use fewer aliases",
                        event.start_mark,
                    )
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitError(
                    None,
                    None,
                    f"mappings and lists are nested more than {MAX_DEPTH} levels deep; a config needs far fewer",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            node: yaml.Node | None = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            size = 1
            if isinstance(node, yaml.MappingNode):
                size += sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                size += sum(self._sizes[id(item)] for item in node.value)
            self._sizes[id(node)] = size
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # e.g. a date like 2024-13-01: valid YAML, no such day
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {str(node.value)[:40]!r}: {str(exc).partition(';')[0]}", node.start_mark
            ) from None


def _walk(node: yaml.Node, path: Path, doc: Document, checked: set[int]) -> None:
    """Index every key and item; on a mapping's first visit (an anchor is visited once per alias) find the
    keys written twice and the keys that are not strings."""
    index = doc.index
    if isinstance(node, yaml.MappingNode):
        first_visit = id(node) not in checked
        checked.add(id(node))
        seen: dict[tuple[str, str], int] = {}
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a list or mapping as a key: construction refuses it with its line
            key, line = key_node.value, key_node.start_mark.line + 1
            if first_visit:
                ident = (key_node.tag, key)
                if ident in seen:
                    hint = "; merge several with <<: [*a, *b]" if key_node.tag == _MERGE else "; keep one of them"
                    message = f"key {key!r} appears twice (lines {seen[ident]} and {line}){hint}"
                    doc.problems.append(YamlProblem((*path, key), message, line))
                else:
                    seen[ident] = line
                if key_node.tag not in (_STR, _MERGE):
                    read_as = _READ_AS.get(key_node.tag, key_node.tag.rpartition(":")[2])
                    index.odd_keys.append(OddKey(path, key, read_as, line))
            if key_node.tag == _MERGE:
                merged.append(value_node)
                continue
            index.add((*path, key), line)
            _walk(value_node, (*path, key), doc, checked)
        # merged keys are found at the merging mapping's path; the keys written there win, as in YAML
        for source in merged:
            sources = source.value if isinstance(source, yaml.SequenceNode) else [source]
            for sub in sources:
                _walk(sub, path, doc, checked)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index.add((*path, i), item.start_mark.line + 1)
            _walk(item, (*path, i), doc, checked)


def _syntax_error(exc: yaml.YAMLError, text: str) -> YamlSyntaxError:
    if isinstance(exc, _LimitError):
        mark = exc.problem_mark
        return YamlSyntaxError(str(exc.problem), mark.line + 1 if mark is not None else None)
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        said = [str(part) for part in (exc.context, exc.problem) if part]
        message = f"invalid YAML: {', '.join(said) or 'cannot parse'}"
        if "'\\t'" in message:
            message += "; indent with spaces, not tabs"
        return YamlSyntaxError(message, line)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return YamlSyntaxError(
            f"invalid YAML: control character U+{int(exc.character):04X} is not allowed; remove it", line
        )
    return YamlSyntaxError(f"invalid YAML: {exc}", None)


def parse(text: str) -> Document:
    """Parse YAML text (safe subset) into plain data, the line of every key and item, and the keys written
    twice. Raises YamlSyntaxError for a document that cannot be read at all (syntax, size, depth, aliases)."""
    size = len(text) if len(text) > MAX_BYTES else len(text.encode("utf-8", "replace"))
    if size > MAX_BYTES:
        raise YamlSyntaxError(f"the document is {size_text(size)}, more than {size_text(MAX_BYTES)}", None)
    try:
        loader = _Loader(text)  # the reader refuses control characters right away
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text) from None
    try:
        node = loader.get_single_node()
        doc = Document(None, LineIndex())
        if node is not None:
            doc.index.add((), node.start_mark.line + 1)
            _walk(node, (), doc, set())  # before construction, which rewrites merged mappings in place
            doc.data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text) from None
    finally:
        loader.dispose()
    return doc


def load(text: str) -> tuple[Any, LineIndex]:
    """Parse YAML text (safe subset) into plain data plus the line index of every key and item; a key written
    twice is an error like a syntax error (use `parse` to list such keys with other problems)."""
    doc = parse(text)
    if doc.problems:
        first = doc.problems[0]
        raise YamlSyntaxError(first.message, first.line, doc.problems)
    return doc.data, doc.index
