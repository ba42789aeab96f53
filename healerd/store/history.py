"""The history table: counts of check results and seconds of service state per time bucket (healerd/history.py
says which buckets). Rows are added to, never rewritten: a bucket counted by two writers, or before and after a
restart, holds the sum."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from ..history import MACHINE_KEEP, SERVICE_KEEP, HistoryBook, HistoryRow
from .engine import STORE_FAULTS, Connection, ThreadedDatabase

_ADD = (
    "INSERT INTO history (service, machine, check_name, bucket, width, runs, ok, warning, critical, unknown, dur_sum,"
    " up_s, down_s) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (service, machine, check_name, bucket) DO UPDATE"
    " SET runs=history.runs+excluded.runs, ok=history.ok+excluded.ok, warning=history.warning+excluded.warning,"
    " critical=history.critical+excluded.critical, unknown=history.unknown+excluded.unknown,"
    " dur_sum=history.dur_sum+excluded.dur_sum, up_s=history.up_s+excluded.up_s, down_s=history.down_s+excluded.down_s"
)
#: seconds between prunings of the old rows
PRUNE_EVERY = 3600.0
_COLS = "bucket, width, runs, ok, warning, critical, unknown, dur_sum, up_s, down_s"


class History:
    def __init__(
        self,
        db: ThreadedDatabase,
        flush: Callable[[], Awaitable[None]],
        *,
        states: Callable[[], dict[str, bool]] = dict,
    ) -> None:
        self._db = db
        self._flush = flush
        self.book = HistoryBook()
        #: the services whose time up or down this node counts, and whether each is down now (the daemon's
        #: health book; in a cluster, the leader's only)
        self.states = states
        self._force = False
        self._pruned_at = 0.0

    def take(self, now: float) -> list[HistoryRow]:
        rows = self.book.take(now, self.states(), self._force)
        self._force = False
        return rows

    def prune_due(self, now: float) -> float | None:
        """Once an hour: the time the rows are pruned at (in the flush's transaction), else None."""
        if now - self._pruned_at < PRUNE_EVERY:
            return None
        self._pruned_at = now
        return now

    @staticmethod
    def write(conn: Connection, rows: list[HistoryRow], prune_at: float | None = None) -> None:
        """Inside the flush transaction: add the rows; machine rows older than a day, service rows older than a
        week, go (hourly)."""
        if rows:
            conn.executemany(_ADD, rows)
        if prune_at is not None:
            conn.execute(
                "DELETE FROM history WHERE (machine!='' AND bucket<?) OR bucket<?",
                (prune_at - MACHINE_KEEP, prune_at - SERVICE_KEEP),
            )

    async def refresh(self) -> None:
        """Write what was counted so far (the reads after it see it); a failing store is read all the same."""
        self._force = True
        with contextlib.suppress(*STORE_FAULTS):
            await self._flush()

    async def buckets(
        self, service: str, machine: str, check: str, since: float, fresh: bool = True
    ) -> list[dict[str, Any]]:
        """Buckets of one series, oldest first (with `fresh`, what was counted since the last write included)."""
        if fresh:
            await self.refresh()

        def q() -> list[dict[str, Any]]:
            rows = self._db.conn.execute(
                f"SELECT {_COLS} FROM history WHERE service=? AND machine=? AND check_name=? AND bucket>=?"
                " ORDER BY bucket",
                (service, machine, check, since),
            ).fetchall()
            names = _COLS.split(", ")
            return [dict(zip(names, r, strict=True)) for r in rows]

        return await self._db.read(q)

    async def machines(self, service: str, machines: list[str], since: float) -> dict[str, list[dict[str, Any]]]:
        """The buckets of several machines of a service (every check: the first check's rows come first), by
        machine, in one query (call `refresh` first for the latest)."""
        if not machines:
            return {}
        marks = ",".join("?" * len(machines))

        def q() -> dict[str, list[dict[str, Any]]]:
            rows = self._db.conn.execute(
                f"SELECT machine, check_name, {_COLS} FROM history WHERE service=? AND machine IN ({marks})"
                " AND bucket>=? ORDER BY machine, check_name, bucket",
                (service, *machines, since),
            ).fetchall()
            names = ["machine", "check", *_COLS.split(", ")]
            out: dict[str, list[dict[str, Any]]] = {}
            for r in rows:
                out.setdefault(r[0], []).append(dict(zip(names, r, strict=True)))
            return out

        return await self._db.read(q)

    async def checks(self, service: str, since: float) -> list[str]:
        """The checks the service has history of since then (service-wide rows)."""

        def q() -> list[str]:
            rows = self._db.conn.execute(
                "SELECT DISTINCT check_name FROM history WHERE service=? AND machine='' AND check_name!=''"
                " AND bucket>=? ORDER BY check_name",
                (service, since),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._db.read(q)
