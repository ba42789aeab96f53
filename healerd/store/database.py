"""The SQLite database in `state_dir` (WAL), on its own thread so the event loop never blocks: opening and
migrating it, refusing a damaged one, and noticing when it fails (disk full, read-only) and recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from .interface import StoreError
from .schema import MIGRATIONS, statements

log = structlog.get_logger("healerd.store")
T = TypeVar("T")

#: what SQLite (or the OS under it) raises when the disk is full, read-only or gone
STORE_FAULTS = (sqlite3.OperationalError, sqlite3.DatabaseError, OSError)


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


class SqliteDatabase:
    """One connection, used only from one thread; the repositories run their statements through `call`
    (writes) and `read` (reads), which keep track of the store's health."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="healerd-store")
        self._conn: sqlite3.Connection | None = None
        #: the last store failure while it lasts (disk full, read-only): None when writes go through
        self.fault: str | None = None
        self.fault_since: float | None = None
        self.errors = 0
        self._fault_listeners: list[Callable[[str | None], None]] = []

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
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- running statements -----------------------------------------------------------------------------
    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` (which may write) on the store's thread. A failure marks the store faulty; the next write
        that goes through marks it healthy again."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except STORE_FAULTS as exc:
            self._failed(exc)
            raise
        if self.fault is not None:
            self._recovered()
        return result

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read on the store's thread: reads work on a full disk, so they say nothing about recovery."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except STORE_FAULTS as exc:
            self._failed(exc)
            raise

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection, for code running on the store's thread (inside `call`/`read`) only."""
        if self._conn is None:
            raise RuntimeError("the state store is not open")
        return self._conn

    @contextlib.contextmanager
    def transaction(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """BEGIN … COMMIT on the store's thread; whatever fails in between (COMMIT included) rolls back, so the
        next transaction can start."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise

    # -- health ---------------------------------------------------------------------------------------------
    def on_fault(self, listener: Callable[[str | None], None]) -> None:
        """`listener(reason)` when the store starts failing, `listener(None)` when it works again."""
        self._fault_listeners.append(listener)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.fault is None:
            self.fault, self.fault_since = f"{type(exc).__name__}: {exc}", time.time()
            log.error(
                "the state store is failing; monitoring and alerting go on, writes are retried",
                path=str(self.path),
                error=self.fault,
            )
            for listener in self._fault_listeners:
                listener(self.fault)

    def _recovered(self) -> None:
        log.warning(
            "the state store works again",
            path=str(self.path),
            failed_for=round(time.time() - (self.fault_since or 0), 1),
        )
        self.fault = self.fault_since = None
        for listener in self._fault_listeners:
            listener(None)
