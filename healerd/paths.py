"""Relative paths in a config resolve against the config file's folder; plugin options resolve them here."""

from __future__ import annotations

import contextvars
from pathlib import Path

#: the folder of the config file being loaded (set by the loader, read by plugins' option validators)
_CONFIG_DIR: contextvars.ContextVar[Path] = contextvars.ContextVar("healerd_config_base")


def set_config_dir(folder: Path) -> None:
    """Relative paths validated from now on (in this context) resolve against `folder`."""
    _CONFIG_DIR.set(folder)


def resolve_path(p: Path) -> Path:
    """A path from the config, resolved against the config file's folder."""
    return p if p.is_absolute() else (_CONFIG_DIR.get(Path.cwd()) / p).resolve()


def resolve_against(base: Path, p: Path) -> Path:
    """`p` resolved against `base` unless it is absolute."""
    return p if p.is_absolute() else (base / p).resolve()
