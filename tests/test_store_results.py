"""Stored check results: bounded per check, replayed in order after a restart, newest first for the API."""

from __future__ import annotations

from pathlib import Path

from healerd.health import CheckKey
from healerd.results import CheckResult, PerfDatum, Status
from healerd.store import Store


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


async def test_recent_results_are_per_check_newest_first_with_their_metrics(store: Store) -> None:
    web, db = CheckKey("web", "m1", "health"), CheckKey("web", "m1", "disk")
    store.results.add(web, CheckResult(Status.OK, "fast", (PerfDatum("time", 0.02, "s"),), 0.02), 1.0)
    store.results.add(web, CheckResult(Status.WARNING, "slow", (), 1.5), 2.0)
    store.results.add(db, CheckResult(Status.CRITICAL, "full"), 3.0)
    recent = await store.results.recent(web)  # buffered results are flushed first
    assert recent == [
        {"timestamp": 2.0, "status": "WARNING", "message": "slow", "duration": 1.5, "metrics": []},
        {
            "timestamp": 1.0,
            "status": "OK",
            "message": "fast",
            "duration": 0.02,
            "metrics": [PerfDatum("time", 0.02, "s").as_dict()],
        },
    ]
    history = await store.results.history()
    assert set(history) == {web, db} and [r.message for _, r in history[web]] == ["fast", "slow"]
