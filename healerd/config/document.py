"""The config file as a document, before any section is read: bounded reading, and the keys and characters
no config can hold (keys written twice, keys that are not strings, NUL characters)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import _yaml
from .problems import Collector, ConfigError, Loc, Problem

#: mappings whose keys are names, and what they name
NAMED: dict[Loc, str] = {
    ("services",): "service",
    ("providers",): "provider",
    ("images",): "image",
    ("notifiers",): "notifier",
}


def read_text(path: Path) -> str:
    """The file's text, read no further than the size cap (a config named /dev/zero must not eat memory)."""
    filename = str(path)
    try:
        with path.open("rb") as f:
            content = f.read(_yaml.MAX_BYTES + 1)
            size = max(len(content), os.fstat(f.fileno()).st_size)
    except OSError as exc:
        raise ConfigError(filename, [Problem((), f"cannot read the config file: {exc.strerror or exc}")]) from None
    refuse_big(filename, size)
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = content.count(b"\n", 0, exc.start) + 1
        message = f"the config is not UTF-8 text (byte 0x{content[exc.start]:02x}); save it as UTF-8"
        raise ConfigError(filename, [Problem((), message, line)]) from None


def refuse_big(filename: str, size: int) -> None:
    if size > _yaml.MAX_BYTES:
        message = (
            f"config is {_yaml.size_text(size)}, more than {_yaml.size_text(_yaml.MAX_BYTES)}; "
            "a config is a few KiB: is this the right file?"
        )
        raise ConfigError(filename, [Problem((), message)])


def key_problems(doc: _yaml.Document, out: Collector) -> None:
    """Keys written twice, and keys YAML did not read as strings (`123:`, `true:`): no key in a config is
    anything but a string, and in a name's place the message says so."""
    for dup in doc.problems:
        out.problems.append(Problem(dup.path, dup.message, dup.line))
    for key in doc.index.odd_keys:
        mapping = key.path
        what = NAMED.get(mapping) or ("version" if mapping[:1] == ("images",) and mapping[2:] == ("versions",) else "")
        subject = f"{what} names" if what else "keys"
        out.problems.append(
            Problem(
                (*mapping, key.text),
                f"{subject} must be strings ({key.text} is read as {key.read_as}); quote it: '{key.text}'",
                key.line,
            )
        )


def strings_only(data: Any) -> Any:
    """The document without the keys that are not strings (already reported), so nothing trips on them."""
    if isinstance(data, dict):
        return {k: strings_only(v) for k, v in data.items() if isinstance(k, str)}
    if isinstance(data, list):
        return [strings_only(v) for v in data]
    return data


def nul_problems(data: Any, path: Loc, out: Collector) -> bool:
    """A NUL character cannot be in a path, a command or a header; found here, it would be a crash later.
    True when there was one."""
    if isinstance(data, str) and "\x00" in data:
        out.add(path, "contains a NUL character (\\0); remove it")
        return True
    found = False
    if isinstance(data, dict):
        for k, v in data.items():
            if "\x00" in k:
                out.add((*path, k), "this key contains a NUL character (\\0); remove it")
                found = True
            found = nul_problems(v, (*path, k), out) or found
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found = nul_problems(v, (*path, i), out) or found
    return found
