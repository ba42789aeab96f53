"""Rollouts of image versions: one row each, rewritten at every step, so a restart resumes where it stopped.
The last rollout of a service stays readable after it ended."""

from __future__ import annotations

import json
from typing import Any

from .engine import ThreadedDatabase
from .interface import RolloutRecord
from .text import to_json

_COLS = "id, service, image, version, previous, stage, active, paused, reason, started_at, updated_at, ended_at, data"
_UPDATE = ", ".join(f"{c}=excluded.{c}" for c in _COLS.split(", ")[1:])


def _record(row: tuple[Any, ...]) -> RolloutRecord:
    return RolloutRecord._make((*row[:6], bool(row[6]), bool(row[7]), *row[8:12], json.loads(row[12])))


class Rollouts:
    def __init__(self, db: ThreadedDatabase) -> None:
        self._db = db

    async def save(self, rollout: RolloutRecord) -> None:
        """Insert or replace the whole rollout (leader-only: fenced)."""
        row = (*rollout[:6], int(rollout.active), int(rollout.paused), *rollout[8:12], to_json(rollout.data))
        await self._db.fenced(
            lambda: self._db.conn.execute(
                f"INSERT INTO rollouts ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                f" ON CONFLICT (id) DO UPDATE SET {_UPDATE}",
                row,
            )
        )

    async def get(self, rollout_id: str) -> RolloutRecord | None:
        rows = await self._select(f"SELECT {_COLS} FROM rollouts WHERE id=?", (rollout_id,))
        return rows[0] if rows else None

    async def active(self) -> list[RolloutRecord]:
        return await self._select(f"SELECT {_COLS} FROM rollouts WHERE active=1 ORDER BY started_at")

    async def latest(self, service: str) -> RolloutRecord | None:
        rows = await self.recent(service, 1)
        return rows[0] if rows else None

    async def recent(self, service: str | None = None, limit: int = 20) -> list[RolloutRecord]:
        """Newest first."""
        where, args = (" WHERE service=?", (service,)) if service is not None else ("", ())
        return await self._select(
            f"SELECT {_COLS} FROM rollouts{where} ORDER BY started_at DESC LIMIT ?", (*args, limit)
        )

    async def _select(self, sql: str, args: tuple[Any, ...] = ()) -> list[RolloutRecord]:
        return await self._db.read(lambda: [_record(r) for r in self._db.conn.execute(sql, args)])
