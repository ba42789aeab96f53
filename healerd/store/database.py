"""The SQLite database in `state_dir` (WAL), on its own thread so the event loop never blocks: opening and
migrating it, refusing a damaged one, and noticing when it fails (disk full, read-only) and recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import structlog

from .engine import Connection, ThreadedDatabase
from .interface import StoreError
from .schema import MIGRATIONS, statements
from .text import printable_parameters

log = structlog.get_logger("healerd.store")
T = TypeVar("T")


def rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction. SQLite may already have rolled it back by itself (a full disk): a second
    ROLLBACK would raise and hide the real error, and a transaction left open would block every later one."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def damage(state_dir: Path) -> str | None:
    """What is wrong with an existing state.db (not a database, truncated, corrupt), or None."""
    path = state_dir / "state.db"
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            result = str(conn.execute("PRAGMA quick_check").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    return None if result == "ok" else result


def move_aside(state_dir: Path) -> Path | None:
    """Rename a damaged state.db (and its -wal/-shm) out of the way; returns the new name."""
    path = state_dir / "state.db"
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"state.db.broken-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(f"{target}{suffix}")
    return target


class _Printable:
    """sqlite3's connection with every text parameter made printable (as PostgreSQL's adapter does), so that
    both stores hold the same text."""

    __slots__ = ("raw",)

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self.raw.execute(sql, printable_parameters(parameters))

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        return self.raw.executemany(sql, (printable_parameters(p) for p in parameters))


class SqliteDatabase(ThreadedDatabase):
    """One connection, used only from one thread; the repositories run their statements through `call`
    (writes), `read` (reads) and `fenced` (the same as `call`: one node alone is always the leader)."""

    def __init__(self, path: Path) -> None:
        super().__init__(1, "healerd-store")
        self.path = path
        self.where = {"path": str(path)}
        self._conn: sqlite3.Connection | None = None

    # -- lifecycle --------------------------------------------------------------------------------------
    async def open(self, then: Callable[[], None]) -> None:
        """Open (creating and migrating as needed), then run `then` on the store's thread."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open, then)
        except StoreError:
            raise
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(self._explain(exc)) from None

    def _explain(self, exc: BaseException) -> str:
        text = str(exc)
        folder = self.path.parent
        if isinstance(exc, OSError) or "unable to open" in text or "readonly" in text or "read-only" in text:
            return (
                f"cannot open the state database {self.path}: {text}. The state directory {folder} must exist "
                f"and be writable by this user (check its permissions and free space: ls -ld {folder}; df -h {folder})"
            )
        return (
            f"the state database {self.path} is damaged ({text}). Nothing was changed. Restore it from a backup, "
            f"or move it aside and start with an empty state: healerd run -c … --move-aside-broken-state "
            "(machines still running are adopted again)"
        )

    async def open_readonly(self) -> bool:
        """Open an existing store for reading only (never creates, migrates or writes; a running daemon may
        hold it). False when there is no store yet."""
        return await self.read(self._open_readonly)

    def _open_readonly(self) -> bool:
        if not self.path.is_file():
            return False
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, timeout=5)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.close()
            return False
        self._conn = conn
        return True

    def _open(self, then: Callable[[], None]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path} was written by a newer healerd (schema {version}, this one knows "
                f"{len(MIGRATIONS)}); upgrade healerd or restore a backup of the state directory"
            )
        # A truncated or overwritten file opens fine and fails later: look before trusting it.
        problem = conn.execute("PRAGMA quick_check").fetchone()[0]
        if problem != "ok":
            conn.close()
            raise StoreError(self._explain(sqlite3.DatabaseError(f"quick_check: {problem}")))
        for i in range(version, len(MIGRATIONS)):
            conn.execute("BEGIN IMMEDIATE")
            for statement in statements(MIGRATIONS[i]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {i + 1}")
            conn.execute("COMMIT")
            log.info("state store migrated", schema=i + 1, path=str(self.path))
        self._conn = conn
        then()

    async def close(self) -> None:
        await self.call(self._close)
        self.shutdown()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- running statements -----------------------------------------------------------------------------
    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    @property
    def conn(self) -> Connection:
        """The connection, for code running on the store's thread (inside `call`/`read`) only."""
        return _Printable(self._raw())

    def _raw(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the state store is not open")
        return self._conn

    @contextlib.contextmanager
    def transaction(self, immediate: bool = False) -> Iterator[Connection]:
        """BEGIN … COMMIT on the store's thread; whatever fails in between (COMMIT included) rolls back, so the
        next transaction can start."""
        conn = self._raw()
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield _Printable(conn)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise

    def json_text(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"
