"""Machine records: every machine healerd knows or launched, with its lifecycle and attributes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..machines import Lifecycle, Machine
from .engine import ThreadedDatabase
from .text import to_json

_COLS = "service, id, address, lifecycle, attributes"


def _machine(row: tuple[Any, ...]) -> Machine:
    return Machine(row[0], row[1], row[2], Lifecycle(row[3]), json.loads(row[4]))


class Machines:
    def __init__(self, db: ThreadedDatabase) -> None:
        self._db = db

    async def save(self, machines: Sequence[Machine], provider: str, now: float) -> None:
        """Insert or update (address, lifecycle, provider, attributes) in one transaction."""
        rows = [
            (m.service, m.id, m.address, m.lifecycle.value, provider, to_json(m.attributes), now, now) for m in machines
        ]

        def write() -> None:
            with self._db.transaction() as conn:
                conn.executemany(
                    "INSERT INTO machines (service, id, address, lifecycle, provider, attributes, created_at,"
                    " updated_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (service, id) DO UPDATE SET"
                    " address=excluded.address, lifecycle=excluded.lifecycle, provider=excluded.provider,"
                    " attributes=excluded.attributes, updated_at=excluded.updated_at",
                    rows,
                )

        await self._db.fenced(write)

    async def upsert(self, machine: Machine, provider: str, now: float) -> None:
        await self.save([machine], provider, now)

    async def get(self, service: str, machine_id: str) -> Machine | None:
        def q() -> Machine | None:
            row = self._db.conn.execute(
                f"SELECT {_COLS} FROM machines WHERE service=? AND id=?", (service, machine_id)
            ).fetchone()
            return _machine(row) if row else None

        return await self._db.read(q)

    async def find(self, machine_id: str) -> Machine | None:
        """The machine with this id, whatever its service."""

        def q() -> Machine | None:
            row = self._db.conn.execute(f"SELECT {_COLS} FROM machines WHERE id=?", (machine_id,)).fetchone()
            return _machine(row) if row else None

        return await self._db.read(q)

    async def for_incident(self, incident: str) -> list[Machine]:
        """Machines launched for an incident (attribute `launched_for`)."""

        def q() -> list[Machine]:
            rows = self._db.conn.execute(
                f"SELECT {_COLS} FROM machines WHERE {self._db.json_text('attributes', 'launched_for')} = ?",
                (incident,),
            )
            return [_machine(r) for r in rows]

        return await self._db.read(q)

    async def load(self, service: str | None = None) -> list[Machine]:
        """Every machine, or those of one service."""

        def q() -> list[Machine]:
            sql = f"SELECT {_COLS} FROM machines"
            args: tuple[str, ...] = ()
            if service is not None:
                sql += " WHERE service = ?"
                args = (service,)
            return [_machine(r) for r in self._db.conn.execute(sql, args)]

        return await self._db.read(q)

    async def forget(self, service: str, keep: set[str]) -> None:
        """Drop machines (and their results) of a service that are no longer configured."""

        def q() -> None:
            rows = self._db.conn.execute("SELECT id FROM machines WHERE service = ?", (service,)).fetchall()
            gone = [(service, r[0]) for r in rows if r[0] not in keep]
            if gone:
                with self._db.transaction() as conn:
                    conn.executemany("DELETE FROM machines WHERE service = ? AND id = ?", gone)
                    conn.executemany("DELETE FROM results WHERE service = ? AND machine = ?", gone)

        await self._db.fenced(q)
