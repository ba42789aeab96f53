"""The one registry mechanism for every extension point: built-ins, entry points, drop-in files."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("healerd.registry")

T = TypeVar("T", bound=type)


class RegistryError(Exception):
    """A plugin could not be loaded; the message names the file or entry point and the cause."""


@dataclass
class Registry(Generic[T]):
    """Kinds of one extension point (check kinds, providers, ...), keyed by their `kind` name.

    Built-ins are registered by the package, third-party kinds come from the entry point `group`, and
    site-local kinds from Python files dropped in a folder (`check_paths`).
    """

    group: str
    base: type
    _kinds: dict[str, T] = field(default_factory=dict)
    _origin: dict[str, str] = field(default_factory=dict)
    _entry_points_loaded: bool = False

    def register(self, cls: T, origin: str = "built-in") -> T:
        kind = getattr(cls, "kind", None)
        if not isinstance(kind, str) or not kind:
            raise RegistryError(f'{origin}: {cls.__name__} has no `kind` name; set `kind = "..."` on the class')
        if kind in self._kinds and self._kinds[kind] is not cls:
            raise RegistryError(
                f"{origin}: kind {kind!r} is already provided by {self._origin[kind]}; choose another kind name"
            )
        self._kinds[kind] = cls
        self._origin[kind] = origin
        return cls

    def get(self, kind: str) -> T | None:
        self.load_entry_points()
        return self._kinds.get(kind)

    def kinds(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._kinds)

    def copy(self) -> Registry[T]:
        self.load_entry_points()
        return Registry(self.group, self.base, dict(self._kinds), dict(self._origin), True)

    def load_entry_points(self) -> list[str]:
        """Register kinds published by installed packages under the entry point group."""
        if self._entry_points_loaded:
            return []
        self._entry_points_loaded = True
        problems = []
        for ep in entry_points(group=self.group):
            try:
                cls = ep.load()
                self.register(cls, origin=f"entry point {ep.name} ({ep.value})")
            except Exception as exc:  # a broken third-party plugin must not stop the daemon
                problems.append(f"entry point {ep.name} ({ep.value}): {type(exc).__name__}: {exc}")
        for problem in problems:
            log.warning("plugin not loaded", group=self.group, problem=problem)
        return problems

    def load_dropins(self, folders: Iterable[Path]) -> list[str]:
        """Import every `*.py` under the folders and register the plugin classes it defines.

        Returns one problem string per file that failed; the others are still registered.
        """
        problems: list[str] = []
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.py")):
                if path.name.startswith("_"):
                    continue
                try:
                    for cls in self._classes_in(path):
                        self.register(cls, origin=str(path))
                except RegistryError as exc:
                    problems.append(str(exc))
                except Exception as exc:  # any error in a user's plugin file is reported, not raised
                    problems.append(f"{path}: cannot load drop-in: {type(exc).__name__}: {exc}")
        return problems

    def _classes_in(self, path: Path) -> list[T]:
        digest = hashlib.sha1(str(path).encode() + path.read_bytes()).hexdigest()[:12]
        name = f"healerd_dropin_{path.stem}_{digest}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise RegistryError(f"{path}: not an importable Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        found: list[T] = []
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                obj.__module__ == module.__name__
                and issubclass(obj, self.base)
                and obj is not self.base
                and not inspect.isabstract(obj)
                and getattr(obj, "kind", None)
            ):
                found.append(obj)  # type: ignore[arg-type]
        return found
