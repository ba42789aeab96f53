"""Text from outside healerd (alert names and annotations, check output, comments, a provider's attributes) made
storable: NUL and the other control characters become visible escapes (`\\x00`) before a statement or a JSON
column holds them. PostgreSQL refuses NUL in text (and `\\u0000` in JSON it reads as jsonb); in a log line or
on the page a control character misleads the reader. Tab, newline and carriage return are kept (multi-line
plugin output)."""

from __future__ import annotations

import json
import re
from typing import Any

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: in JSON text: an escaped backslash (kept, so that what follows it is not read as an escape) or the escape of a
#: control character (json.dumps writes every control character as \u00XX, except DEL, which it leaves raw)
_JSON_CONTROL = re.compile(r"\\\\|\\u00(?:0[0-8bBcCeEfF]|1[0-9a-fA-F]|7[fF])|\x7f")


def _escaped(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def _json_escaped(match: re.Match[str]) -> str:
    found = match.group()
    if found == "\\\\":
        return found
    code = ord(found) if found == "\x7f" else int(found[2:], 16)
    return f"\\\\x{code:02x}"  # JSON for a backslash and xNN: the value printable() makes of the character


def printable(text: str) -> str:
    """`text` with NUL and control characters (all but tab, newline, carriage return) written as `\\xNN`."""
    return text if _CONTROL.search(text) is None else _CONTROL.sub(_escaped, text)


def to_json(value: Any) -> str:
    """The JSON text of `value` for a store column: its strings as `printable` makes them (objects JSON cannot
    hold become their str())."""
    text = json.dumps(value, default=str)
    return _JSON_CONTROL.sub(_json_escaped, text) if "\\u00" in text or "\x7f" in text else text


def printable_parameters(values: Any) -> Any:
    """A statement's parameters (a sequence or a mapping) with every text `printable`; unchanged (the same
    object) when no text holds a control character, which is nearly always."""
    if isinstance(values, tuple | list):
        if not any(isinstance(v, str) and _CONTROL.search(v) for v in values):
            return values
        cleaned = [printable(v) if isinstance(v, str) else v for v in values]
        return cleaned if isinstance(values, list) else tuple(cleaned)
    if isinstance(values, dict):
        if not any(isinstance(v, str) and _CONTROL.search(v) for v in values.values()):
            return values
        return {k: printable(v) if isinstance(v, str) else v for k, v in values.items()}
    return values
