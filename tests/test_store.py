"""The SQLite state store: schema migrations, bounded history, events, restore after restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from healerd.events import Event, EventType
from healerd.health import CheckKey
from healerd.machines import Lifecycle, Machine
from healerd.results import CheckResult, PerfDatum, Status
from healerd.store import MIGRATIONS, Store


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


async def test_history_is_bounded_and_survives_reopen(tmp_path: Path) -> None:
    key = CheckKey("web", "m1", "health")
    store = Store(tmp_path, history=25)
    await store.open()
    for i in range(100):
        status = Status.CRITICAL if i >= 90 else Status.OK
        store.results.add(key, CheckResult(status, f"run {i}", (PerfDatum("time", 0.01, "s"),), 0.01), 1000.0 + i)
    await store.flush()
    await store.close()

    store = Store(tmp_path, history=25)
    await store.open()
    history = await store.results.history()
    rows = history[key]
    assert len(rows) == 25  # bounded: only the most recent results are kept
    assert [r.message for _, r in rows] == [f"run {i}" for i in range(75, 100)]  # in order
    assert rows[-1][1].status is Status.CRITICAL and rows[-1][1].metrics[0].label == "time"
    store.results.add(key, CheckResult(Status.OK, "run 100"), 2000.0)  # sequence continues after reopen
    recent = await store.results.recent(key, limit=2)
    assert [r["message"] for r in recent] == ["run 100", "run 99"]
    await store.close()


async def test_events_are_logged_queried_and_pruned(tmp_path: Path) -> None:
    store = Store(tmp_path, event_log_size=100)
    await store.open()
    for i in range(250):
        store.events.add(Event(EventType.MACHINE_UNHEALTHY, "web", f"e{i}", 1000.0 + i, machine=f"m{i % 2}"))
    await store.flush()
    rows = await store.events.recent(service="web", machine="m1", limit=5)
    assert [r["summary"] for r in rows] == ["e249", "e247", "e245", "e243", "e241"]
    await store.events.prune()
    assert len(await store.events.recent(limit=1000)) == 100
    await store.close()


async def test_machines_are_saved_and_forgotten(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    machines = [Machine("web", f"m{i}", f"127.0.0.1:{8000 + i}", Lifecycle.IN_SERVICE) for i in range(3)]
    await store.machines.save(machines, "lab", 1.0)
    await store.machines.forget("web", {"m0", "m2"})
    assert sorted(m.id for m in await store.machines.load("web")) == ["m0", "m2"]
    await store.close()
