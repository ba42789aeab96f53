"""What every state store is made of: the repositories over one database engine, the engine's health, and the
batch that writes buffered results and events in one transaction. `Store` (SQLite) and `PgStore` (PostgreSQL)
add how they open."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..events import Event
from ..history import HistoryRow
from .engine import ThreadedDatabase
from .events import Events
from .history import History
from .images import Images
from .incidents import Incidents
from .machines import Machines
from .meta import Meta
from .outbox import Outbox
from .results import ResultRow, Results
from .rollouts import Rollouts
from .silences import Silences


class BaseStore:
    """Every repository is an attribute (`store.incidents.save(…)`)."""

    def __init__(
        self,
        db: ThreadedDatabase,
        history: int,
        *,
        event_log_size: int,
        states: Callable[[], dict[str, bool]] = dict,
    ) -> None:
        self._db = db
        self.machines = Machines(db)
        self.results = Results(db, history, flush=self.flush)
        self.events = Events(db, event_log_size, flush=self.flush)
        self.history = History(db, self.flush, states=states)
        self.incidents = Incidents(db)
        self.images = Images(db)
        self.rollouts = Rollouts(db)
        self.silences = Silences(db)
        self.meta = Meta(db)
        self.outbox = Outbox(db)

    @property
    def db(self) -> ThreadedDatabase:
        return self._db

    @property
    def where(self) -> str:
        """Where the store lives, for messages (a path, or a connection string without its password)."""
        raise NotImplementedError

    @property
    def remedy(self) -> str:
        """What an operator does when the store fails, in a sentence."""
        raise NotImplementedError

    # -- health ---------------------------------------------------------------------------------------------
    @property
    def fault(self) -> str | None:
        """The last store failure while it lasts (disk full, read-only, server away): None when writes go through."""
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
        raise NotImplementedError

    async def open_readonly(self) -> bool:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # -- the batch ------------------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Write the buffered results and events in one transaction. On failure the events are kept for the
        next flush; the results are not (newer ones supersede them)."""
        results = self.results.take()
        events = self.events.take()
        now = time.time()
        history = self.history.take(now)
        prune_at = self.history.prune_due(now) if history else None
        if not results and not events and not history:
            return
        try:
            await self._db.call(self._write_batch, results, events, history, prune_at)
        except Exception:
            self.events.put_back(events)
            self.history.book.put_back(history)
            raise

    def _write_batch(
        self, results: list[ResultRow], events: list[Event], history: list[HistoryRow], prune_at: float | None
    ) -> None:
        with self._db.transaction() as conn:
            Results.write(conn, results)
            Events.write(conn, events)
            History.write(conn, history, prune_at)
