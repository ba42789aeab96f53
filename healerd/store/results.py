"""Check results: the last `history` results of every (service, machine, check), in a ring of slots.

The hot path only appends to a buffer; `Store.flush` writes it (with the events) in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from ..health import CheckKey
from ..results import CheckResult, PerfDatum, Status
from .engine import Connection, ThreadedDatabase
from .text import to_json

_UPSERT = (
    "INSERT INTO results (service, machine, check_name, slot, seq, ts, status, message, duration, metrics)"
    " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (service, machine, check_name, slot) DO UPDATE SET seq=excluded.seq,"
    " ts=excluded.ts, status=excluded.status, message=excluded.message, duration=excluded.duration,"
    " metrics=excluded.metrics"
)
ResultRow = tuple[str, str, str, int, int, float, int, str, float, str]


class Results:
    def __init__(self, db: ThreadedDatabase, history: int, *, flush: Callable[[], Awaitable[None]]) -> None:
        self._db = db
        self.keep = history  # results kept per check
        self._flush = flush
        self._seq: dict[CheckKey, int] = {}
        self._pending: list[ResultRow] = []

    # -- the hot path: buffered -----------------------------------------------------------------------------
    def add(self, key: CheckKey, result: CheckResult, ts: float) -> None:
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        metrics = to_json([m.as_dict() for m in result.metrics]) if result.metrics else "[]"
        self._pending.append(
            (
                key.service,
                key.machine,
                key.check,
                seq % self.keep,
                seq,
                ts,
                int(result.status),
                result.message,
                result.duration,
                metrics,
            )
        )

    def seen(self, key: CheckKey, seq: int) -> bool:
        """Another node of the cluster stored result `seq` of `key`: True if it is newer than any seen here (numbering
        goes on from it when this node takes the check over)."""
        if seq <= self._seq.get(key, 0):
            return False
        self._seq[key] = seq
        return True

    def take(self) -> list[ResultRow]:
        """The buffered rows, emptying the buffer (a failed write drops them: newer results supersede them)."""
        rows, self._pending = self._pending, []
        return rows

    @staticmethod
    def write(conn: Connection, rows: list[ResultRow]) -> None:
        """Inside the flush transaction."""
        if rows:
            conn.executemany(_UPSERT, rows)

    def load_sequences(self) -> None:
        """On open, on the store's thread: numbering goes on where it stopped."""
        for service, machine, check, seq in self._db.conn.execute(
            "SELECT service, machine, check_name, MAX(seq) FROM results GROUP BY service, machine, check_name"
        ):
            self._seq[CheckKey(service, machine, check)] = seq

    # -- reads ----------------------------------------------------------------------------------------------
    async def history(self) -> dict[CheckKey, list[tuple[float, CheckResult]]]:
        """Every stored result, oldest first per check (replayed on start-up)."""

        def q() -> dict[CheckKey, list[tuple[float, CheckResult]]]:
            out: dict[CheckKey, list[tuple[float, CheckResult]]] = {}
            for service, machine, check, ts, status, message, duration, metrics in self._db.conn.execute(
                "SELECT service, machine, check_name, ts, status, message, duration, metrics FROM results"
                " ORDER BY service, machine, check_name, seq"
            ):
                perf = tuple(PerfDatum(**m) for m in json.loads(metrics)) if metrics != "[]" else ()
                out.setdefault(CheckKey(service, machine, check), []).append(
                    (ts, CheckResult(Status(status), message, perf, duration))
                )
            return out

        return await self._db.read(q)

    async def recent(self, key: CheckKey, limit: int = 30) -> list[dict[str, Any]]:
        """The newest results of one check first, as the API shows them (buffered ones included)."""
        await self._flush()

        def q() -> list[dict[str, Any]]:
            rows = self._db.conn.execute(
                "SELECT ts, status, message, duration, metrics FROM results WHERE service=? AND machine=? AND"
                " check_name=? ORDER BY seq DESC LIMIT ?",
                (key.service, key.machine, key.check, limit),
            ).fetchall()
            return [
                {
                    "timestamp": ts,
                    "status": Status(st).name,
                    "message": msg,
                    "duration": dur,
                    "metrics": json.loads(m),
                }
                for ts, st, msg, dur, m in rows
            ]

        return await self._db.read(q)
