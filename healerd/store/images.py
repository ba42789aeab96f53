"""Known-good images: per image family, the version replacements launch from."""

from __future__ import annotations

from .database import SqliteDatabase
from .interface import KnownGood


class SqliteImages:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def get(self, family: str) -> KnownGood | None:
        row = await self._db.read(
            lambda: self._db.conn.execute("SELECT known_good, seeded FROM images WHERE family=?", (family,)).fetchone()
        )
        return KnownGood(row[0], row[1]) if row else None

    async def save(self, family: str, known_good: str, seeded: str, now: float) -> None:
        await self._db.call(
            lambda: self._db.conn.execute(
                "INSERT OR REPLACE INTO images VALUES (?,?,?,?)", (family, known_good, seeded, now)
            )
        )
