"""What the other nodes of a cluster changed: machine records and results after a cursor (PostgreSQL only).

Rows carry (txid, rid): the transaction that wrote them and a change number (pg_schema's trigger). Reading
only among transactions that have all ended (txid below the snapshot's xmin) means a row committed late is
read late, never skipped.
"""

from __future__ import annotations

from typing import Any

from .postgres import PgDatabase

Cursor = tuple[str, int]

_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
_MACHINES = """
SELECT service, id, address, lifecycle, attributes, txid::text, rid FROM machines
WHERE (txid, rid) > (?::xid8, ?) AND txid < pg_snapshot_xmin(pg_current_snapshot()) AND node <> ?
ORDER BY txid, rid LIMIT ?
"""
_RESULTS = """
SELECT service, machine, check_name, seq, ts, status, message, duration, metrics, txid::text, rid FROM results
WHERE (txid, rid) > (?::xid8, ?) AND txid < pg_snapshot_xmin(pg_current_snapshot()) AND node <> ?
ORDER BY txid, rid LIMIT ?
"""


class Changes:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def horizon(self) -> str:
        """The oldest transaction still running (as text): everything below it has ended."""
        return await self._db.read(lambda: str(self._db.conn.execute(_HORIZON).fetchone()[0]))

    async def since(self, machines: Cursor, results: Cursor, node: str, limit: int) -> tuple[list[Any], list[Any]]:
        """Machine records and results written by other nodes after the cursors, oldest first."""

        def q() -> tuple[list[Any], list[Any]]:
            conn = self._db.conn
            return (
                conn.execute(_MACHINES, (*machines, node, limit)).fetchall(),
                conn.execute(_RESULTS, (*results, node, limit)).fetchall(),
            )

        return await self._db.read(q)
