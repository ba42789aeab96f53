"""The JSONPath subset an `http` check's `expect.json` takes: a path to one value of the body.

    $                   the whole document
    $.status            a member by name (letters, digits, `_`, `-`)
    $['a b'] $["a.b"]   a member by any name
    $.items[0]          an array element (`[-1]` the last)

Wildcards, filters, slices and recursive descent are refused: a health condition names one value.
"""

from __future__ import annotations

import re
from typing import Any

Step = str | int
Path = tuple[Step, ...]

_NAME = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)")
_INDEX = re.compile(r"\[(-?\d+)\]")
_QUOTED = re.compile(r"""\[(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\]""")
_UNSUPPORTED = re.compile(r"\[\*\]|\.\*|\.\.|\[\?|\[-?\d*:")

_MISSING = object()


def parse(text: str) -> Path:
    """The steps of `text`; ValueError naming what is wrong and what to write instead."""
    if not text.startswith("$"):
        raise ValueError(f"JSON path {text!r} must start with $ (e.g. $.status)")
    steps: list[Step] = []
    i = 1
    while i < len(text):
        if m := _NAME.match(text, i):
            steps.append(m.group(1))
        elif m := _INDEX.match(text, i):
            steps.append(int(m.group(1)))
        elif m := _QUOTED.match(text, i):
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            steps.append(re.sub(r"\\(.)", r"\1", raw))
        elif _UNSUPPORTED.match(text, i):
            raise ValueError(
                f"JSON path {text!r}: wildcards, filters, slices and '..' are not supported; "
                "name one value, e.g. $.checks[0].status"
            )
        else:
            raise ValueError(
                f"JSON path {text!r}: cannot read {text[i:]!r}; write .name, ['any name'] or [index], e.g. $.db.status"
            )
        i = m.end()
    return tuple(steps)


def find(document: Any, path: Path) -> tuple[bool, Any]:
    """(found, value) of `path` in `document`."""
    value = document
    for step in path:
        if isinstance(step, int):
            if not isinstance(value, list) or not -len(value) <= step < len(value):
                return False, None
            value = value[step]
        else:
            if not isinstance(value, dict):
                return False, None
            value = value.get(step, _MISSING)
            if value is _MISSING:
                return False, None
    return True, value


def same(found: Any, expected: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1 and "1" is not 1."""
    if isinstance(found, bool) or isinstance(expected, bool):
        return isinstance(found, bool) and isinstance(expected, bool) and found is expected
    if isinstance(found, int | float) and isinstance(expected, int | float):
        return found == expected  # Python compares an int and a float exactly (2**53 + 1 is not 2.0**53)
    if isinstance(found, list) and isinstance(expected, list):
        return len(found) == len(expected) and all(same(a, b) for a, b in zip(found, expected, strict=True))
    if isinstance(found, dict) and isinstance(expected, dict):
        return found.keys() == expected.keys() and all(same(found[k], expected[k]) for k in found)
    return type(found) is type(expected) and bool(found == expected)
