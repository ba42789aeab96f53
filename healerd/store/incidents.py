"""Incidents, the step journal of their remediations, and the remediation log the rate limits count.

Every step's start and outcome is a row of the journal, committed before the next step starts: after a
crash, the engine resumes from it.
"""

from __future__ import annotations

import json
from typing import Any

from .engine import ThreadedDatabase
from .interface import Failures, IncidentRecord
from .text import to_json

_COLS = (
    "id, service, machine, state, playbook, opened_at, updated_at, resolved_at, summary, replacement, error, details,"
    " acked_at, acked_by, ack_comment"
)


_UPDATE = ", ".join(f"{c}=excluded.{c}" for c in _COLS.split(", ")[1:])


def _incident(row: tuple[Any, ...]) -> IncidentRecord:
    return IncidentRecord._make((*row[:11], json.loads(row[11]), *row[12:15]))


class Incidents:
    def __init__(self, db: ThreadedDatabase) -> None:
        self._db = db

    # -- incidents --------------------------------------------------------------------------------------
    async def unresolved(self) -> list[IncidentRecord]:
        return await self._select(f"SELECT {_COLS} FROM incidents WHERE state != 'resolved'")

    async def save(self, incident: IncidentRecord) -> None:
        """Insert or replace the whole incident."""
        row = (*incident[:11], to_json(incident.details), *incident[12:15])
        await self._db.fenced(
            lambda: self._db.conn.execute(
                f"INSERT INTO incidents ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                f" ON CONFLICT (id) DO UPDATE SET {_UPDATE}",
                row,
            )
        )

    async def get(self, incident_id: str) -> IncidentRecord | None:
        rows = await self._select(f"SELECT {_COLS} FROM incidents WHERE id=?", (incident_id,))
        return rows[0] if rows else None

    async def recent(self, limit: int = 100, state: str | None = None) -> list[IncidentRecord]:
        """Newest opened first, optionally only those in one state."""
        sql = f"SELECT {_COLS} FROM incidents"
        args: tuple[Any, ...] = ()
        if state:
            sql += " WHERE state = ?"
            args = (state,)
        return await self._select(sql + " ORDER BY opened_at DESC LIMIT ?", (*args, limit))

    async def _select(self, sql: str, args: tuple[Any, ...] = ()) -> list[IncidentRecord]:
        return await self._db.read(lambda: [_incident(r) for r in self._db.conn.execute(sql, args)])

    # -- the step journal -------------------------------------------------------------------------------------
    async def steps(self, incident: str) -> list[dict[str, Any]]:
        """The journal of an incident in step order, outputs decoded."""

        def q() -> list[dict[str, Any]]:
            rows = self._db.conn.execute(
                "SELECT idx, action, state, attempts, started_at, ended_at, outputs, error FROM steps"
                " WHERE incident=? ORDER BY idx",
                (incident,),
            )
            return [
                {
                    "index": r[0],
                    "action": r[1],
                    "state": r[2],
                    "attempts": r[3],
                    "started_at": r[4],
                    "ended_at": r[5],
                    "outputs": json.loads(r[6]),
                    "error": r[7],
                }
                for r in rows
            ]

        return await self._db.read(q)

    async def start_step(self, incident: str, idx: int, action: str, state: str, attempts: int, now: float) -> None:
        """A step (re)starts: its end, outcome and error are cleared; outputs of an earlier attempt stay."""
        await self._db.fenced(
            lambda: self._db.conn.execute(
                "INSERT INTO steps (incident, idx, action, state, attempts, started_at) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT (incident, idx) DO UPDATE SET state=excluded.state, attempts=excluded.attempts,"
                " started_at=excluded.started_at, ended_at=NULL, error=NULL",
                (incident, idx, action, state, attempts, now),
            )
        )

    async def end_step(
        self, incident: str, idx: int, state: str, now: float, outputs: dict[str, Any], error: str | None
    ) -> None:
        encoded = to_json(outputs)
        await self._db.fenced(
            lambda: self._db.conn.execute(
                "UPDATE steps SET state=?, ended_at=?, outputs=?, error=? WHERE incident=? AND idx=?",
                (state, now, encoded, error, incident, idx),
            )
        )

    async def mark_running_steps_interrupted(self, incident: str, now: float) -> None:
        """The steps still `running` were cut short (a crash, a stop): they are run again on resume."""
        await self._db.fenced(
            lambda: self._db.conn.execute(
                "UPDATE steps SET state='interrupted', ended_at=? WHERE incident=? AND state='running'",
                (now, incident),
            )
        )

    # -- the remediation log ----------------------------------------------------------------------------------
    async def log_launch(self, service: str, machine: str, now: float, incident: str | None) -> None:
        """A machine was launched, for an incident or (None) to fill the fleet."""
        await self._log(service, machine, now, "launch", incident)

    async def log_failure(self, service: str, machine: str, now: float, incident: str) -> None:
        await self._log(service, machine, now, "failed", incident)

    async def log_repair(self, service: str, machine: str, now: float, incident: str) -> None:
        """A rung of the ladder mended the machine and kept it."""
        await self._log(service, machine, now, "repaired", incident)

    async def repairs_since(self, service: str, machine: str, since: float) -> int:
        row = await self._db.read(
            lambda: self._db.conn.execute(
                "SELECT COUNT(*) FROM remediation_log WHERE service=? AND machine=? AND kind='repaired' AND ts > ?",
                (service, machine, since),
            ).fetchone()
        )
        return int(row[0])

    async def _log(self, service: str, machine: str, now: float, kind: str, incident: str | None) -> None:
        await self._db.fenced(
            lambda: self._db.conn.execute(
                "INSERT INTO remediation_log (service, machine, ts, kind, incident) VALUES (?,?,?,?,?)",
                (service, machine, now, kind, incident),
            )
        )

    async def launches_since(self, service: str, since: float, *, by_incidents: bool = False) -> int:
        """Launches of the service after `since`; with `by_incidents`, only those made for an incident."""
        sql = "SELECT COUNT(*) FROM remediation_log WHERE service=? AND kind='launch'"
        if by_incidents:
            sql += " AND incident IS NOT NULL"
        sql += " AND ts > ?"
        row = await self._db.read(lambda: self._db.conn.execute(sql, (service, since)).fetchone())
        return int(row[0])

    async def failures(self, service: str, machine: str) -> Failures:
        row = await self._db.read(
            lambda: self._db.conn.execute(
                "SELECT COUNT(*), MAX(ts) FROM remediation_log WHERE service=? AND machine=? AND kind='failed'",
                (service, machine),
            ).fetchone()
        )
        return Failures(int(row[0] or 0), row[1])
