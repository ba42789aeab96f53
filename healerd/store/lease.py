"""Membership and the leader lease, in the shared PostgreSQL database, on a connection of their own.

One round (every lease_ttl / 3) is one transaction: this node's heartbeat, an attempt to take or renew the
lease row (holder, epoch, expires_at, all by the database's clock), and a read of the nodes. A node takes
the lease only when it is free or expired, and the epoch grows each time the holder changes (or a holder
comes back after its own lease expired): the store refuses leader-only writes of any older epoch.

Epochs never go backwards: each node remembers the highest epoch it has seen, and a lease row behind it (a
standby promoted before it had replayed the last takeovers) is moved past it when the node takes or renews
the lease, so no write of an epoch the cluster already used can be taken for the newest.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import psycopg

from .._version import __version__

_HEARTBEAT = """
INSERT INTO cluster_nodes (node, advertise, version, started_at, last_seen, machines, checks)
VALUES (%(node)s, %(advertise)s, %(version)s, now(), now(), %(machines)s, %(checks)s)
ON CONFLICT (node) DO UPDATE SET advertise = excluded.advertise, version = excluded.version,
    last_seen = now(), machines = excluded.machines, checks = excluded.checks,
    started_at = CASE WHEN %(fresh)s THEN now() ELSE cluster_nodes.started_at END
"""
# %(seen)s: the highest epoch this node has seen; a row behind it starts a new term past it
_TAKE = """
INSERT INTO cluster_lease (name, holder, epoch, expires_at, acquired_at)
VALUES ('leader', %(node)s, %(seen)s + 1, now() + %(ttl)s * interval '1 second', now())
ON CONFLICT (name) DO UPDATE SET
    epoch = CASE WHEN cluster_lease.epoch < %(seen)s THEN %(seen)s + 1
                 WHEN cluster_lease.holder = excluded.holder AND cluster_lease.expires_at > now()
                 THEN cluster_lease.epoch ELSE cluster_lease.epoch + 1 END,
    acquired_at = CASE WHEN cluster_lease.epoch >= %(seen)s AND cluster_lease.holder = excluded.holder
                            AND cluster_lease.expires_at > now()
                 THEN cluster_lease.acquired_at ELSE now() END,
    holder = excluded.holder,
    expires_at = excluded.expires_at
WHERE cluster_lease.holder = excluded.holder OR cluster_lease.expires_at <= now()
"""
_LEASE = "SELECT holder, epoch, extract(epoch FROM expires_at - now()) FROM cluster_lease WHERE name = 'leader'"
_DISPUTED = "UPDATE cluster_nodes SET disputed = %s WHERE node = %s AND disputed <> %s"
_NODES = """
SELECT node, advertise, version, extract(epoch FROM last_seen), extract(epoch FROM now() - last_seen),
       machines, checks, extract(epoch FROM started_at), disputed
FROM cluster_nodes WHERE last_seen > now() - interval '1 day' ORDER BY node
"""
_RELEASE = "UPDATE cluster_lease SET expires_at = now() WHERE name = 'leader' AND holder = %s AND epoch = %s"
_LEAVE = "UPDATE cluster_nodes SET last_seen = now() - interval '1 hour' WHERE node = %s"
_PRUNE = "DELETE FROM cluster_nodes WHERE last_seen < now() - interval '1 day'"


@dataclass(frozen=True)
class Member:
    node: str
    advertise: str
    version: str
    last_seen: float  # the database's clock, epoch seconds
    age: float  # seconds since its last heartbeat, by the database's clock
    machines: int
    checks: int
    started_at: float
    disputed: int = 0  # machines only this node sees down, the other vantage points up (set by the leader)


@dataclass(frozen=True)
class Round:
    """What one round found."""

    leader: str | None
    epoch: int
    expires_in: float  # seconds left on the lease, by the database's clock
    members: tuple[Member, ...]  # heartbeats of the last day, live or not

    def live(self, ttl: float) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.age < ttl)


class Lease:
    def __init__(self, dsn: str, node: str, *, advertise: str, ttl: float, pgbouncer: bool = False) -> None:
        self.pgbouncer = pgbouncer
        self.dsn = dsn
        self.node = node
        self.advertise = advertise
        self.ttl = ttl
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._fresh = True
        #: the highest leader epoch this node has read (kept across reconnections, to any server)
        self.seen = 0

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn,
                autocommit=True,
                application_name=f"healerd/{self.node}",
                connect_timeout=max(1, int(self.ttl / 3)),
                options=f"-c statement_timeout={int(self.ttl * 1000 / 2)} "
                f"-c idle_in_transaction_session_timeout={int(self.ttl * 1000 / 3)}",
                prepare_threshold=None if self.pgbouncer else 5,
            )
        return self._conn

    async def round(
        self, machines: int, checks: int, *, take: bool = True, disputed: dict[str, int] | None = None
    ) -> Round:
        """Heartbeat, take or renew the lease (unless `take` is False: a node stepping down), record what the
        leader found disputed (per node), read the nodes."""
        conn = await self._connection()
        try:
            async with conn.transaction():
                await conn.execute(
                    _HEARTBEAT,
                    {
                        "node": self.node,
                        "advertise": self.advertise,
                        "version": __version__,
                        "machines": machines,
                        "checks": checks,
                        "fresh": self._fresh,
                    },
                )
                if take:
                    await conn.execute(_TAKE, {"node": self.node, "ttl": self.ttl, "seen": self.seen})
                if disputed is not None:
                    async with conn.cursor() as cur:
                        await cur.executemany(_DISPUTED, [(n, node, n) for node, n in disputed.items()])
                lease = await (await conn.execute(_LEASE)).fetchone()
                rows = await (await conn.execute(_NODES)).fetchall()
        except BaseException:
            await self.close()  # a cancelled or failed round leaves the connection in no known state
            raise
        self._fresh = False
        members = tuple(
            Member(r[0], r[1], r[2], float(r[3]), float(r[4]), int(r[5]), int(r[6]), float(r[7]), int(r[8]))
            for r in rows
        )
        if lease is None:
            return Round(None, 0, 0.0, members)
        found = Round(str(lease[0]), int(lease[1]), float(lease[2]), members)
        self.seen = max(self.seen, found.epoch)
        return found

    async def release(self, epoch: int) -> None:
        """A leader stopping cleanly ends its lease now: another node takes over at its next round."""
        conn = await self._connection()
        await conn.execute(_RELEASE, (self.node, epoch))

    async def leave(self) -> None:
        """A node stopping cleanly: the others rebalance its machines at their next round."""
        conn = await self._connection()
        await conn.execute(_LEAVE, (self.node,))
        await conn.execute(_PRUNE)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(psycopg.Error):
                await conn.close()
