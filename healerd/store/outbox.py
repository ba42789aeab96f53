"""The alert outbox: routed events wait as items, are grouped into one message per (notifier, service), and
each message is delivered at least once; what a receiver refuses for good ends in the dead letter.

Message states: `pending` (to deliver, from `next_attempt_at`), `delivered`, `dead`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .engine import ThreadedDatabase
from .interface import Compose, OutboxItem, PendingMessage, SentElsewhere
from .meta import Meta
from .text import to_json

_MESSAGE_COLS = (
    "id, notifier, service, state, attempts, created_at, updated_at, delivered_at, last_status, last_error, events"
)
_INSERT_MESSAGE = (
    "INSERT INTO outbox (id, notifier, service, state, attempts, next_attempt_at, created_at, updated_at,"
    " payload, events) VALUES (?,?,?,'pending',0,?,?,?,?,?)"
)


class Outbox:
    def __init__(self, db: ThreadedDatabase) -> None:
        self._db = db

    # -- items ----------------------------------------------------------------------------------------------
    async def enqueue(self, items: Sequence[OutboxItem]) -> None:
        """Commit routed events, all or none."""
        rows = [(i.notifier, i.service, to_json(i.event), i.created_at) for i in items]

        def write() -> None:
            with self._db.transaction() as conn:
                conn.executemany(
                    "INSERT INTO outbox_items (notifier, service, event, created_at) VALUES (?,?,?,?)", rows
                )

        await self._db.call(write)

    async def waiting(self) -> list[tuple[str, str, float]]:
        """(notifier, service, oldest created_at) of every group of items not yet in a message."""
        rows = await self._db.read(
            lambda: self._db.conn.execute(
                "SELECT notifier, service, MIN(created_at) FROM outbox_items WHERE message IS NULL"
                " GROUP BY notifier, service"
            ).fetchall()
        )
        return [(str(n), str(s), float(first)) for n, s, first in rows]

    async def make_message(self, notifier: str, service: str, message_id: str, now: float, compose: Compose) -> int:
        """Turn the waiting items of (notifier, service) into one message, in one transaction: the message,
        the items claimed by it and what `compose` asks to keep in meta are written together or not at all.
        Returns how many events the message holds (0: nothing was waiting, nothing written)."""

        def write() -> int:
            with self._db.transaction(immediate=True) as conn:
                items = conn.execute(
                    "SELECT seq, event FROM outbox_items WHERE notifier=? AND service=? AND message IS NULL"
                    " ORDER BY seq",
                    (notifier, service),
                ).fetchall()
                if not items:
                    return 0
                made = compose([json.loads(e) for _, e in items])
                conn.execute(
                    _INSERT_MESSAGE,
                    (message_id, notifier, service, now, now, now, to_json(made.payload), len(items)),
                )
                conn.executemany("UPDATE outbox_items SET message=? WHERE seq=?", [(message_id, s) for s, _ in items])
                if made.meta:
                    Meta.write(conn, made.meta)
                return len(items)

        return await self._db.fenced(write)

    # -- messages -------------------------------------------------------------------------------------------
    async def add_message(self, message_id: str, notifier: str, service: str, now: float, payload: Any) -> None:
        """A message made of no outbox item (Alertmanager's periodic re-post)."""
        row = (message_id, notifier, service, now, now, now, to_json(payload), 0)
        await self._db.fenced(lambda: self._db.conn.execute(_INSERT_MESSAGE, row))

    async def adopt(self, messages: Sequence[SentElsewhere], now: float) -> None:
        """Take messages made outside the outbox (paged straight to the receivers while the store was
        unreachable), under their own ids. Every node that paged hands over the same ids: a message already
        here stays as it is, except that a delivery recorded elsewhere ends one still pending (it is not sent
        again)."""
        rows = [
            (
                m.id,
                m.notifier,
                m.service,
                m.state,
                m.attempts,
                now,
                now,
                now,
                now if m.state == "delivered" else None,
                to_json(m.payload),
                m.last_status,
                m.last_error,
            )
            for m in messages
        ]

        def write() -> None:
            with self._db.transaction() as conn:
                conn.executemany(
                    "INSERT INTO outbox (id, notifier, service, state, attempts, next_attempt_at, created_at,"
                    " updated_at, delivered_at, payload, last_status, last_error, events)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,1)"
                    " ON CONFLICT (id) DO UPDATE SET state = excluded.state, delivered_at = excluded.delivered_at,"
                    " updated_at = excluded.updated_at"
                    " WHERE outbox.state = 'pending' AND excluded.state = 'delivered'",
                    rows,
                )

        await self._db.call(write)

    async def next_pending(self, notifier: str) -> PendingMessage | None:
        """The oldest pending message of the notifier (due or not): per notifier, messages go out in order."""
        row = await self._db.read(
            lambda: self._db.conn.execute(
                "SELECT id, attempts, next_attempt_at, payload FROM outbox WHERE notifier=? AND state='pending'"
                " ORDER BY created_at, id LIMIT 1",
                (notifier,),
            ).fetchone()
        )
        return PendingMessage(row[0], row[1], row[2], json.loads(row[3])) if row else None

    async def record_attempt(
        self,
        message_id: str,
        state: str,
        attempts: int,
        next_attempt_at: float,
        now: float,
        status: int | None,
        error: str | None,
        delivered_at: float | None,
    ) -> None:
        # what the receiver did is a fact, recorded even by a node that just lost the lead (else the new
        # leader sends it again); a retry to schedule is the leader's decision, fenced
        write = self._db.call if state in ("delivered", "dead") else self._db.fenced
        await write(
            lambda: self._db.conn.execute(
                "UPDATE outbox SET state=?, attempts=?, next_attempt_at=?, updated_at=?, last_status=?,"
                " last_error=?, delivered_at=? WHERE id=?",
                (state, attempts, next_attempt_at, now, status, error, delivered_at, message_id),
            )
        )

    # -- views ----------------------------------------------------------------------------------------------
    async def pending_due(self, before: float) -> int:
        """Pending messages due before `before`."""
        row = await self._db.read(
            lambda: self._db.conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE state='pending' AND next_attempt_at <= ?", (before,)
            ).fetchone()
        )
        return int(row[0])

    async def depth(self) -> dict[str, int]:
        """Per notifier: pending messages plus items waiting to be grouped."""

        def q() -> dict[str, int]:
            conn = self._db.conn
            out: dict[str, int] = {}
            for sql in (
                "SELECT notifier, COUNT(*) FROM outbox WHERE state='pending' GROUP BY notifier",
                "SELECT notifier, COUNT(*) FROM outbox_items WHERE message IS NULL GROUP BY notifier",
            ):
                for name, count in conn.execute(sql):
                    out[name] = out.get(name, 0) + int(count)
            return out

        return await self._db.read(q)

    async def messages(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest messages first, without their payload."""
        rows = await self._db.read(
            lambda: self._db.conn.execute(
                f"SELECT {_MESSAGE_COLS} FROM outbox ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        )
        names = [c.strip() for c in _MESSAGE_COLS.split(",")]
        return [dict(zip(names, r, strict=True)) for r in rows]

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per notifier, messages per state."""
        rows = await self._db.read(
            lambda: self._db.conn.execute(
                "SELECT notifier, state, COUNT(*) FROM outbox GROUP BY notifier, state"
            ).fetchall()
        )
        out: dict[str, dict[str, int]] = {}
        for name, state, count in rows:
            out.setdefault(name, {})[state] = int(count)
        return out
