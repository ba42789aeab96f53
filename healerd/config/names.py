"""The safe-name rule. Services, providers, images, versions, notifiers and machines name files and folders
(state, rotation files, evidence bundles), so a name is one safe path component."""

from __future__ import annotations

import re

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_CHECK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")  # ':' for virtual checks like alert:<name>
NAME_RULE = "1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit, without '..'"


def name_problem(name: str, what: str, check: bool = False) -> str | None:
    """Why `name` cannot name a `what` (None when it can)."""
    if (_CHECK_NAME if check else _NAME).match(name) and ".." not in name:
        return None
    rule = NAME_RULE.replace("or '-'", "'-' or ':'") if check else NAME_RULE
    fixed = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.:-]+" if check else r"[^A-Za-z0-9_.-]+", "-", name))
    fixed = re.sub(r"^[^A-Za-z0-9]+", "", fixed)[:63]
    hint = f", e.g. {fixed!r}" if fixed and fixed != name else ""
    return f"{what} name {name!r} cannot be used: names are {rule} (they become file names); rename it{hint}"
