"""The event log: every event healerd published, newest kept up to `event_log_size`.

Events are buffered like results and written by `Store.flush`; a failed write keeps them for the next one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from ..events import Event
from .engine import STORE_FAULTS, Connection, ThreadedDatabase
from .text import to_json


class Events:
    def __init__(self, db: ThreadedDatabase, log_size: int, *, flush: Callable[[], Awaitable[None]]) -> None:
        self._db = db
        self.log_size = log_size
        self._flush = flush
        self._pending: list[Event] = []

    # -- the hot path: buffered -----------------------------------------------------------------------------
    def add(self, event: Event) -> None:
        self._pending.append(event)

    def take(self) -> list[Event]:
        events, self._pending = self._pending, []
        return events

    def put_back(self, events: list[Event]) -> None:
        """A flush failed: these go first in the next one."""
        self._pending[:0] = events

    @staticmethod
    def write(conn: Connection, events: list[Event]) -> None:
        """Inside the flush transaction; an event already stored (same id) is not stored twice."""
        if not events:
            return
        conn.executemany(
            "INSERT INTO events (id, ts, type, service, machine, check_name, incident, severity,"
            " status, summary, details) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
            [
                (
                    e.id,
                    e.timestamp,
                    e.type.value,
                    e.service,
                    e.machine,
                    e.check,
                    e.incident,
                    e.severity.value,
                    e.status,
                    e.summary,
                    to_json(e.details),
                )
                for e in events
            ],
        )

    # -- reads and retention --------------------------------------------------------------------------------
    async def recent(
        self,
        service: str | None = None,
        machine: str | None = None,
        limit: int = 100,
        types: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first, as the API shows them (buffered ones included: written first, or, when the store
        cannot write — a full disk — read from the buffer, since reads still work)."""
        with contextlib.suppress(*STORE_FAULTS):  # the store said so once; what it has, and what waits
            await self._flush()
        waiting = [
            e
            for e in reversed(self._pending)
            if (not service or e.service == service)
            and (not machine or e.machine == machine)
            and (not types or e.type.value in types)
        ][:limit]

        def q() -> list[dict[str, Any]]:
            sql = (
                "SELECT id, ts, type, service, machine, check_name, incident, severity, status, summary, details"
                " FROM events WHERE 1=1"
            )
            args: list[Any] = []
            if service:
                sql += " AND service = ?"
                args.append(service)
            if machine:
                sql += " AND machine = ?"
                args.append(machine)
            if types:
                sql += f" AND type IN ({','.join('?' * len(types))})"
                args.extend(types)
            sql += " ORDER BY seq DESC LIMIT ?"
            args.append(limit)
            return [
                {
                    "id": r[0],
                    "timestamp": r[1],
                    "type": r[2],
                    "service": r[3],
                    "machine": r[4],
                    "check": r[5],
                    "incident": r[6],
                    "severity": r[7],
                    "status": r[8],
                    "summary": r[9],
                    "details": json.loads(r[10]),
                }
                for r in self._db.conn.execute(sql, args)
            ]

        stored = await self._db.read(q)
        if not waiting:
            return stored
        ids = {e.id for e in waiting}
        return [*(_row(e) for e in waiting), *(r for r in stored if r["id"] not in ids)][:limit]

    async def prune(self) -> None:
        """Keep the newest `log_size` events."""

        def q() -> None:
            row = self._db.conn.execute("SELECT MAX(seq) FROM events").fetchone()
            if row and row[0]:
                self._db.conn.execute("DELETE FROM events WHERE seq <= ?", (row[0] - self.log_size,))

        await self._db.call(q)


def _row(e: Event) -> dict[str, Any]:
    """An event not written yet, as a stored one reads."""
    return {
        "id": e.id,
        "timestamp": e.timestamp,
        "type": e.type.value,
        "service": e.service,
        "machine": e.machine,
        "check": e.check,
        "incident": e.incident,
        "severity": e.severity.value,
        "status": e.status,
        "summary": e.summary,
        "details": e.details,
    }
