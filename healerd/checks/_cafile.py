"""The `ca_file` option of the tls and grpc checks: where the file is, what is wrong with it, and the client
contexts that trust it, made again once the file is replaced in place (a rotated CA is used by the next run)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

from .._neterrors import describe

#: a CA file as it is now: its modification time (ns) and size
Stamp = tuple[int, int]


def ca_path(ca_file: str, base_dir: Path) -> Path:
    """`ca_file` as written (`~` expanded), relative to the config's folder."""
    path = Path(ca_file).expanduser()
    return path if path.is_absolute() else base_dir / path


def ca_problem(path: Path, exc: BaseException | None = None) -> str | None:
    """What is wrong with the CA file at `path`, naming the fix; None when it loads. `exc`: loading it failed so."""
    if exc is None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
            return None
        except (OSError, ssl.SSLError) as failed:  # ssl.SSLError is an OSError
            exc = failed
    if isinstance(exc, FileNotFoundError) or not path.is_file():
        return f"ca_file {path} does not exist; give the path of a PEM file of CA certificates"
    return f"ca_file {path} holds no readable CA certificate ({describe(exc)}); give a PEM file of CA certificates"


def preflight(ca_file: str | None, base_dir: Path) -> list[tuple[tuple[str | int, ...], str]]:
    """A kind's `preflight` problems of its `ca_file` (a template is known per machine only)."""
    if ca_file is None or "{" in ca_file:
        return []
    problem = ca_problem(ca_path(ca_file, base_dir))
    return [(("ca_file",), problem)] if problem else []


class CaContexts:
    """Client contexts by (verify, CA file), made by `make(verify, ca_file)`: the system's trust store or a CA file
    is loaded once, a CA file again when its modification time or size changed. At most `limit` are kept (a
    templated `ca_file` makes one per machine), the least recently made dropped first."""

    def __init__(self, make: Callable[[bool, Path | None], ssl.SSLContext], *, limit: int) -> None:
        self._make = make
        self._limit = max(1, limit)
        self._held: dict[tuple[bool, Path | None], tuple[Stamp | None, ssl.SSLContext]] = {}

    def get(self, verify: bool, ca_file: Path | None) -> ssl.SSLContext:
        """The context; OSError (ssl.SSLError included) when the CA file cannot be read."""
        key = (verify, ca_file)
        stamp = None
        if verify and ca_file is not None:
            stat = ca_file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        held = self._held.get(key)
        if held is not None and held[0] == stamp:
            return held[1]
        ctx = self._make(verify, ca_file)
        self._held.pop(key, None)
        while len(self._held) >= self._limit:
            del self._held[next(iter(self._held))]
        self._held[key] = (stamp, ctx)
        return ctx

    def clear(self) -> None:
        self._held.clear()
