"""What the repositories run their statements through: a database engine on its own threads, so the event loop
never blocks. SQLite (`database.SqliteDatabase`) and PostgreSQL (`postgres.PgDatabase`) both implement it;
the repositories hold one and never know which.

A repository passes a plain function to `call` (it may write), `read` (it only reads) or `fenced` (a write
that only the cluster's leader may make: refused when a newer leader epoch exists). Inside that function,
`db.conn` is the connection of the running thread, with `?` placeholders on both engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import psycopg
import structlog

log = structlog.get_logger("healerd.store")
T = TypeVar("T")

#: what the database (or the OS under it) raises when the disk is full, read-only or gone, or the server is away
STORE_FAULTS: tuple[type[BaseException], ...] = (
    sqlite3.OperationalError,
    sqlite3.DatabaseError,
    OSError,
    psycopg.Error,
)


class Fenced(Exception):
    """A leader-only write was refused: another node took the lease since (a newer epoch exists)."""


class Connection(Protocol):
    """The part of a DB-API connection the repositories use (sqlite3's, or PostgreSQL's adapter)."""

    def execute(self, sql: str, parameters: Any = (), /) -> Any: ...
    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


class ThreadedDatabase:
    """Statements run on the engine's threads; a failure marks the store faulty (said once), the next write
    that goes through marks it healthy again (said once)."""

    #: where it lives, in log lines: {"path": …} or {"store": the DSN without its password}
    where: dict[str, str] = {}

    def __init__(self, workers: int, thread_name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name)
        self.fault: str | None = None
        self.fault_since: float | None = None
        self.errors = 0
        self._fault_listeners: list[Callable[[str | None], None]] = []

    # -- to implement -------------------------------------------------------------------------------------
    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the calling (engine) thread with `conn` set, as one transaction where the engine has them."""
        raise NotImplementedError

    def _fence(self) -> None:
        """On the engine thread, inside the transaction: raise `Fenced` when this node may not write."""

    @property
    def conn(self) -> Connection:
        raise NotImplementedError

    def json_text(self, column: str, key: str) -> str:
        """SQL for the text of `key` in a JSON text column."""
        raise NotImplementedError

    # -- running statements -----------------------------------------------------------------------------
    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` (which may write) on an engine thread."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn, *args)
        except STORE_FAULTS as exc:
            self._failed(exc)
            raise
        if self.fault is not None:
            self._recovered()
        return result

    async def fenced(self, fn: Callable[..., T], *args: Any) -> T:
        """A write of incident, step, outbox message or machine rows: refused (`Fenced`) unless this node holds
        the leader lease with the newest epoch, checked in the same transaction."""

        def guarded(*a: Any) -> T:
            self._fence()
            return fn(*a)

        return await self.call(guarded, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read: reads work on a full disk, so they say nothing about recovery."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn, *args)
        except STORE_FAULTS as exc:
            self._failed(exc)
            raise

    @contextlib.contextmanager
    def transaction(self, immediate: bool = False) -> Iterator[Connection]:
        """A block of statements that commit together (on an engine thread, inside `call`)."""
        raise NotImplementedError
        yield self.conn  # pragma: no cover

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)

    # -- health ---------------------------------------------------------------------------------------------
    def on_fault(self, listener: Callable[[str | None], None]) -> None:
        """`listener(reason)` when the store starts failing, `listener(None)` when it works again."""
        self._fault_listeners.append(listener)

    def report(self, exc: BaseException | None) -> None:
        """Say that the store fails (`exc`) or works again (None) when no statement did: opening it, say."""
        if exc is not None:
            self._failed(exc)
        elif self.fault is not None:
            self._recovered()

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.fault is None:
            self.fault, self.fault_since = f"{type(exc).__name__}: {exc}".strip(), time.time()
            log.error(
                "the state store is failing; monitoring and alerting go on, writes are retried",
                **self.where,
                error=self.fault,
            )
            for listener in self._fault_listeners:
                listener(self.fault)

    def _recovered(self) -> None:
        log.warning(
            "the state store works again",
            **self.where,
            failed_for=round(time.time() - (self.fault_since or 0), 1),
        )
        self.fault = self.fault_since = None
        for listener in self._fault_listeners:
            listener(None)
