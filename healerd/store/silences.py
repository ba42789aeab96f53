"""Silences: no remediation (and no fleet fill) for a service or a machine until they end."""

from __future__ import annotations

from typing import Any

from .engine import ThreadedDatabase


class Silences:
    def __init__(self, db: ThreadedDatabase) -> None:
        self._db = db

    async def add(
        self,
        sid: str,
        service: str | None,
        machine: str | None,
        starts_at: float,
        ends_at: float,
        comment: str,
        created_by: str,
    ) -> None:
        """`service`/`machine` None: every service/machine."""
        await self._db.call(
            lambda: self._db.conn.execute(
                "INSERT INTO silences (id, service, machine, starts_at, ends_at, comment, created_by)"
                " VALUES (?,?,?,?,?,?,?)",
                (sid, service, machine, starts_at, ends_at, comment, created_by),
            )
        )

    async def delete(self, sid: str) -> bool:
        """False when there was no such silence."""
        deleted = await self._db.call(lambda: self._db.conn.execute("DELETE FROM silences WHERE id=?", (sid,)).rowcount)
        return int(deleted) > 0

    async def active(self, now: float) -> list[dict[str, Any]]:
        """Silences not yet ended at `now` (those starting later included)."""
        rows = await self._db.read(
            lambda: self._db.conn.execute(
                "SELECT id, service, machine, starts_at, ends_at, comment, created_by FROM silences WHERE ends_at > ?",
                (now,),
            ).fetchall()
        )
        return [
            {
                "id": r[0],
                "service": r[1],
                "machine": r[2],
                "starts_at": r[3],
                "ends_at": r[4],
                "comment": r[5],
                "created_by": r[6],
            }
            for r in rows
        ]
