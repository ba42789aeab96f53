"""Known-good images: per image family, the version replacements launch from."""

from __future__ import annotations

from .engine import ThreadedDatabase
from .interface import KnownGood


class Images:
    def __init__(self, db: ThreadedDatabase) -> None:
        self._db = db

    async def get(self, family: str) -> KnownGood | None:
        row = await self._db.read(
            lambda: self._db.conn.execute("SELECT known_good, seeded FROM images WHERE family=?", (family,)).fetchone()
        )
        return KnownGood(row[0], row[1]) if row else None

    async def save(self, family: str, known_good: str, seeded: str, now: float) -> None:
        await self._db.fenced(
            lambda: self._db.conn.execute(
                "INSERT INTO images (family, known_good, seeded, updated_at) VALUES (?,?,?,?) ON CONFLICT (family)"
                " DO UPDATE SET known_good=excluded.known_good, seeded=excluded.seeded, updated_at=excluded.updated_at",
                (family, known_good, seeded, now),
            )
        )
