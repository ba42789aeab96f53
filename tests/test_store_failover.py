"""The store across a failover of its PostgreSQL server, on real servers: leader epochs never go backwards (a
standby promoted with lag), and the store's pooled connections leave a server that no longer takes writes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import psycopg
import pytest
from conftest import lead
from pg import PgServer
from pgpair import PgPair, pg_pair

from healerd.store import Fenced, IncidentRecord
from healerd.store.lease import Lease
from healerd.store.postgres import WORKERS, PgStore


def incident(iid: str) -> IncidentRecord:
    return IncidentRecord(iid, "web", "m1", "open", "replace-machine", 1.0, 1.0, None, "m1 is down", None, None, {})


async def set_lease(store: PgStore, sql: str) -> None:
    """Write the lease row by hand, as a server that lost the last takeovers would hold it."""
    await store.pg.call(lambda: store.pg.conn.execute(sql))


async def test_a_lease_row_behind_the_highest_epoch_a_node_saw_is_moved_past_it(pg: PgServer) -> None:
    dsn = pg.new_database()
    store = PgStore(dsn, "a")
    await store.open()
    a, b = Lease(dsn, "a", advertise="x:1", ttl=30.0), Lease(dsn, "b", advertise="x:2", ttl=30.0)
    try:
        assert (await a.round(0, 0)).epoch == 1
        await set_lease(store, "UPDATE cluster_lease SET epoch = 7")  # takeovers a saw happen
        assert ((found := await a.round(0, 0)).leader, found.epoch) == ("a", 7)
        await b.round(0, 0)  # b has seen 7 too

        # the server fails over to a standby that had not replayed them: the row says epoch 3
        await set_lease(store, "UPDATE cluster_lease SET epoch = 3")
        renewed = await a.round(0, 0)
        assert (renewed.leader, renewed.epoch) == ("a", 8), "the holder renewing must start a term past 7"

        # the row held by another node, expired, far behind: whoever takes it goes past what it saw
        await set_lease(store, "UPDATE cluster_lease SET holder = 'c', epoch = 2, expires_at = now() - interval '1s'")
        taken = await b.round(0, 0)
        assert (taken.leader, taken.epoch) == ("b", 8), "b saw 7, not 8: past 7 is enough for b"
        assert (await a.round(0, 0)).leader == "b"  # a does not take a lease b holds

        # no row at all (a standby that never saw one): the first holder starts past what it saw
        await set_lease(store, "DELETE FROM cluster_lease")
        assert ((first := await a.round(0, 0)).leader, first.epoch) == ("a", 9)

        # a row not behind is left as the protocol made it: the holder keeps its epoch
        assert (await a.round(0, 0)).epoch == 9
    finally:
        await a.close()
        await b.close()
        await store.close()


async def test_a_leader_whose_epoch_the_lease_row_lost_writes_nothing_until_the_epoch_moves_on(pg: PgServer) -> None:
    store = PgStore(pg.new_database(), "a")
    await store.open()
    try:
        await lead(store, epoch=5)
        await store.incidents.save(incident("I1"))
        await set_lease(store, "UPDATE cluster_lease SET epoch = 4")
        with pytest.raises(Fenced, match=r"the lease is at epoch 4 \(held by a\), behind this node's 5"):
            await store.incidents.save(incident("I2"))
        assert await store.incidents.get("I2") is None
    finally:
        await store.close()


@pytest.fixture
def pair() -> Iterator[PgPair]:
    with pg_pair() as made:
        yield made


async def grow_the_pool(store: PgStore) -> None:
    """Hold every connection of the store's pool at once, so that the pool keeps WORKERS of them."""

    def hold() -> None:
        store.pg.conn.execute("SELECT pg_sleep(0.3)")

    await asyncio.gather(*(store.pg.read(hold) for _ in range(WORKERS)))


def healerd_sessions(pair: PgPair, port: int) -> int:
    member = next(m for m in pair.members if m.port == port)
    rows = member.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'healerd/%'")
    return int(rows[0][0])  # type: ignore[call-overload]


async def write_until(store: PgStore, count: int, timeout: float) -> list[Exception]:
    """Save `count` incidents, each tried again until it goes through (as healerd retries a write); the errors
    met on the way."""
    errors: list[Exception] = []
    deadline = asyncio.get_running_loop().time() + timeout
    for i in range(count):
        while True:
            try:
                await store.incidents.save(incident(f"J{i}"))
                break
            except (psycopg.Error, Fenced) as exc:
                errors.append(exc)
                assert asyncio.get_running_loop().time() < deadline, f"still failing: {errors[-3:]}"
                await asyncio.sleep(0.1)
    return errors


@pytest.mark.parametrize("how", ["turned read-only", "killed"])
async def test_after_a_failover_the_store_and_the_lease_go_on_on_the_new_primary(pair: PgPair, how: str) -> None:
    dsn = pair.new_database()
    store = PgStore(dsn, "a")
    await store.open()
    lease = Lease(dsn, "a", advertise="x:1", ttl=30.0)
    try:
        assert (await lease.round(0, 0)).leader == "a"
        store.pg.lead_at(1)
        await store.incidents.save(incident("I1"))
        await grow_the_pool(store)
        old = pair.primary
        assert healerd_sessions(pair, old.port) == WORKERS + 1  # the pool's and the lease's

        if how == "turned read-only":  # the server stays up and keeps every session, but takes no write
            old.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            old.execute("SELECT pg_reload_conf()")
        else:
            pair.kill_primary()
        pair.promote()

        errors = await write_until(store, 2 * WORKERS, 20.0)
        read_only = [e for e in errors if isinstance(e, psycopg.errors.ReadOnlySqlTransaction)]
        assert len(read_only) <= 1, f"{len(read_only)} writes went to the read-only server: {read_only}"
        with contextlib.suppress(psycopg.Error):
            await lease.round(0, 0)  # the lease's connection learns of it at its first round after
        after = await lease.round(0, 0)
        assert (after.leader, after.epoch) == ("a", 1), "the lease goes on, the same, on the new primary"

        # every write is on the new primary, and nothing of healerd's stays on the old one
        assert {i.id for i in await store.incidents.unresolved()} == {"I1", *(f"J{i}" for i in range(2 * WORKERS))}
        if how == "turned read-only":
            PgPair.wait(lambda: healerd_sessions(pair, old.port) == 0, 5)
        print(f"\n{how}: errors met by the writes after the failover: {[type(e).__name__ for e in errors]}")
    finally:
        await lease.close()
        await store.close()
