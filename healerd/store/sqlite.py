"""The state store on SQLite (the embedded default): one database file in `state_dir`, its repositories, and
the batch that writes buffered results and events in one transaction."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..events import Event
from .database import SqliteDatabase, damage, move_aside
from .events import SqliteEvents
from .images import SqliteImages
from .incidents import SqliteIncidents
from .machines import SqliteMachines
from .meta import SqliteMeta
from .outbox import SqliteOutbox
from .results import ResultRow, SqliteResults
from .silences import SqliteSilences

if TYPE_CHECKING:
    from .interface import StateStore


class Store:
    """`Store(state_dir)`, then `await open()`; every repository is an attribute (`store.incidents.save(…)`)."""

    damage = staticmethod(damage)
    move_aside = staticmethod(move_aside)

    def __init__(self, state_dir: Path, history: int = 30, event_log_size: int = 100_000) -> None:
        self._db = SqliteDatabase(state_dir / "state.db")
        self.machines = SqliteMachines(self._db)
        self.results = SqliteResults(self._db, history, self.flush)
        self.events = SqliteEvents(self._db, event_log_size, self.flush)
        self.incidents = SqliteIncidents(self._db)
        self.images = SqliteImages(self._db)
        self.silences = SqliteSilences(self._db)
        self.meta = SqliteMeta(self._db)
        self.outbox = SqliteOutbox(self._db)

    @property
    def path(self) -> Path:
        return self._db.path

    # -- health ---------------------------------------------------------------------------------------------
    @property
    def fault(self) -> str | None:
        """The last store failure while it lasts (disk full, read-only): None when writes go through."""
        return self._db.fault

    @property
    def fault_since(self) -> float | None:
        return self._db.fault_since

    @property
    def errors(self) -> int:
        """Failed operations since start."""
        return self._db.errors

    def on_fault(self, listener: Callable[[str | None], None]) -> None:
        """`listener(reason)` when the store starts failing, `listener(None)` when it works again."""
        self._db.on_fault(listener)

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Create or migrate the database; a damaged or unusable one raises `StoreError` saying what to do."""
        await self._db.open(then=self.results.load_sequences)

    async def open_readonly(self) -> bool:
        """Open an existing store for reading only (never creates, migrates or writes; a running daemon may
        hold it). False when there is no store yet."""
        return await self._db.open_readonly()

    async def close(self) -> None:
        await self.flush()
        await self._db.close()

    # -- the batch ------------------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Write the buffered results and events in one transaction. On failure the events are kept for the
        next flush; the results are not (newer ones supersede them)."""
        results = self.results.take()
        events = self.events.take()
        if not results and not events:
            return
        try:
            await self._db.call(self._write_batch, results, events)
        except Exception:
            self.events.put_back(events)
            raise

    def _write_batch(self, results: list[ResultRow], events: list[Event]) -> None:
        with self._db.transaction() as conn:
            SqliteResults.write(conn, results)
            SqliteEvents.write(conn, events)


if TYPE_CHECKING:

    def _satisfies_the_interface(store: Store) -> StateStore:  # checked by mypy: PostgreSQL implements the same
        return store
