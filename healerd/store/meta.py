"""Small named values that must survive a restart (runtime mode, pause, storms, Alertmanager's alerts)."""

from __future__ import annotations

from collections.abc import Mapping

from .engine import Connection, ThreadedDatabase


class Meta:
    def __init__(self, db: ThreadedDatabase) -> None:
        self._db = db

    async def get(self, key: str) -> str | None:
        row = await self._db.read(
            lambda: self._db.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        )
        return str(row[0]) if row else None

    async def set(self, key: str, value: str) -> None:
        await self._db.call(lambda: self.write(self._db.conn, {key: value}))

    @staticmethod
    def write(conn: Connection, values: Mapping[str, str]) -> None:
        """On the store's thread, alone or inside another repository's transaction."""
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?,?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
            list(values.items()),
        )
