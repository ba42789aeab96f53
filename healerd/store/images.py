"""Image families: the known-good version replacements launch from (and the config's known_good it was seeded
from), and every version's state as promotion left it, with who promoted it and the evidence."""

from __future__ import annotations

import json
from typing import Any

from .engine import ThreadedDatabase
from .interface import KnownGood, VersionRecord
from .text import to_json

_COLS = "family, version, state, reason, promoted_by, updated_at, evidence"
_UPSERT = (
    f"INSERT INTO image_versions ({_COLS}) VALUES (?,?,?,?,?,?,?) ON CONFLICT (family, version) DO UPDATE SET"
    " state=excluded.state, reason=excluded.reason, promoted_by=excluded.promoted_by,"
    " updated_at=excluded.updated_at, evidence=excluded.evidence"
)
_KNOWN_GOOD = (
    "INSERT INTO images (family, known_good, seeded, updated_at) VALUES (?,?,?,?) ON CONFLICT (family)"
    " DO UPDATE SET known_good=excluded.known_good, seeded=excluded.seeded, updated_at=excluded.updated_at"
)


def _row(record: VersionRecord) -> tuple[Any, ...]:
    return (*record[:6], to_json(record.evidence))


class Images:
    def __init__(self, db: ThreadedDatabase) -> None:
        self._db = db

    async def get(self, family: str) -> KnownGood | None:
        row = await self._db.read(
            lambda: self._db.conn.execute("SELECT known_good, seeded FROM images WHERE family=?", (family,)).fetchone()
        )
        return KnownGood(row[0], row[1]) if row else None

    async def save(self, family: str, known_good: str, seeded: str, now: float) -> None:
        await self._db.fenced(lambda: self._db.conn.execute(_KNOWN_GOOD, (family, known_good, seeded, now)))

    async def versions(self, family: str | None = None) -> list[VersionRecord]:
        """The versions promotion has a record of (a version never tried has none), by family and version."""
        sql = f"SELECT {_COLS} FROM image_versions"
        args: tuple[str, ...] = ()
        if family is not None:
            sql += " WHERE family=?"
            args = (family,)

        def q() -> list[VersionRecord]:
            rows = self._db.conn.execute(sql + " ORDER BY family, version", args).fetchall()
            return [VersionRecord._make((*r[:6], json.loads(r[6]))) for r in rows]

        return await self._db.read(q)

    async def mark(self, record: VersionRecord) -> None:
        """Record one version's state (a candidate, a rejection)."""
        await self._db.fenced(lambda: self._db.conn.execute(_UPSERT, _row(record)))

    async def promote(self, family: str, record: VersionRecord, previous: str | None, seeded: str) -> None:
        """In one transaction: `record` becomes the family's known-good version, and the one before it (if another)
        is retired."""

        def write() -> None:
            with self._db.transaction() as conn:
                conn.execute(_KNOWN_GOOD, (family, record.version, seeded, record.updated_at))
                conn.execute(_UPSERT, _row(record))
                if previous and previous != record.version:
                    conn.execute(
                        "UPDATE image_versions SET state='retired', reason=?, promoted_by=?, updated_at=? WHERE"
                        " family=? AND version=? AND state='known_good'",
                        (f"superseded by {record.version}", record.promoted_by, record.updated_at, family, previous),
                    )

        await self._db.fenced(write)
