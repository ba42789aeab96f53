"""The SQLite state store as a whole: schema migrations, the batched flush, failed transactions that roll back
and leave the store usable, fault reporting, read-only opening, damaged files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from healerd.events import Event, EventType
from healerd.health import CheckKey
from healerd.machines import Lifecycle, Machine
from healerd.results import CheckResult, Status
from healerd.store import MIGRATIONS, STORE_FAULTS, Store, StoreError


def fail_inserts(db: Path, table: str, when: str) -> None:
    """Make INSERTs into `table` fail (through a second connection, as another process could) when the new row
    matches `when`: a statement failing in the middle of a transaction."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} WHEN {when} BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )


def allow_inserts(db: Path, table: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"DROP TRIGGER fail_{table}")


async def test_fresh_store_is_wal_and_at_latest_schema(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    await store.open()
    await store.close()
    conn = sqlite3.connect(tmp_path / "state" / "state.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_a_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    conn = sqlite3.connect(tmp_path / "state" / "state.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    conn.close()
    store = Store(tmp_path / "state")
    with pytest.raises(RuntimeError, match="newer healerd"):
        await store.open()


async def test_a_damaged_file_is_refused_and_can_be_moved_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_bytes(b"this is not a database, it only has the name of one" * 100)
    assert Store.damage(state)
    with pytest.raises(StoreError, match=r"is damaged.*--move-aside-broken-state"):
        await Store(state).open()
    moved = Store.move_aside(state)
    assert moved is not None and moved.name.startswith("state.db.broken-") and moved.exists()
    assert not (state / "state.db").exists() and Store.damage(state) is None
    store = Store(state)
    await store.open()  # starts empty
    assert await store.machines.load() == []
    await store.close()


async def test_read_only_opening_reads_and_never_creates_or_writes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    reader = Store(state)
    assert await reader.open_readonly() is False  # nothing there yet
    await reader.close()
    assert not (state / "state.db").exists()

    writer = Store(state)
    await writer.open()
    await writer.meta.set("mode", "dry-run")
    reader = Store(state)
    assert await reader.open_readonly() is True
    assert await reader.meta.get("mode") == "dry-run"
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await reader.meta.set("mode", "auto")
    await reader.close()
    await writer.close()


async def test_a_flush_writes_results_and_events_together_and_a_failed_one_keeps_the_events(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    await store.open()
    db = tmp_path / "state" / "state.db"
    key = CheckKey("web", "m1", "health")
    fail_inserts(db, "events", "NEW.summary = 'poison'")
    store.results.add(key, CheckResult(Status.OK, "run 1"), 1000.0)
    store.events.add(Event(EventType.MACHINE_UNHEALTHY, "web", "fine", 1000.0, machine="m1"))
    store.events.add(Event(EventType.MACHINE_UNHEALTHY, "web", "poison", 1001.0, machine="m1"))
    with pytest.raises(STORE_FAULTS):
        await store.flush()
    assert store.fault is not None and "boom" in store.fault

    allow_inserts(db, "events")
    await store.flush()  # the store is usable again: no transaction was left open
    assert store.fault is None
    assert [e["summary"] for e in await store.events.recent()] == ["poison", "fine"]  # kept, in order
    # all or nothing: the result of the failed batch was not half-written with it (newer results supersede it)
    assert await store.results.recent(key) == []
    await store.close()


async def test_a_failed_transaction_rolls_back_and_the_next_write_goes_through(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    await store.open()
    seen: list[str | None] = []
    store.on_fault(seen.append)
    db = tmp_path / "state" / "state.db"
    fail_inserts(db, "machines", "NEW.id = 'm2'")
    machines = [Machine("web", f"m{i}", f"127.0.0.1:{8000 + i}", Lifecycle.IN_SERVICE) for i in range(4)]
    with pytest.raises(sqlite3.IntegrityError, match="boom"):
        await store.machines.save(machines, "lab", 1.0)
    assert await store.machines.load() == []  # m0 and m1 were rolled back with the failing m2
    assert store.fault is not None and store.fault_since is not None and store.errors == 1

    await store.meta.set("paused", "1")  # a write goes through: the store is healthy again
    assert store.fault is None
    allow_inserts(db, "machines")
    await store.machines.save(machines, "lab", 2.0)
    assert sorted(m.id for m in await store.machines.load()) == ["m0", "m1", "m2", "m3"]
    assert len(seen) == 2 and seen[0] is not None and "boom" in seen[0] and seen[1] is None  # said once each way
    await store.close()


async def test_a_read_that_fails_marks_the_store_but_only_a_write_clears_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    await store.open()
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.execute("ALTER TABLE meta RENAME TO meta_gone")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await store.meta.get("mode")
    assert store.fault is not None
    await store.machines.load()  # reads work on a full disk too: they prove nothing
    assert store.fault is not None
    await store.images.save("demo-web", "v1", "v1", 1.0)
    assert store.fault is None
    await store.close()
