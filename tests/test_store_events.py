"""The event log: queried newest first by service, machine and type, pruned to its size, stored once."""

from __future__ import annotations

from pathlib import Path

from healerd.events import Event, EventType, Severity
from healerd.store import Store


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
    assert (await store.events.recent(limit=1))[0]["summary"] == "e249"  # the newest are the ones kept
    await store.close()


async def test_an_event_round_trips_and_is_stored_once(store: Store) -> None:
    event = Event(
        EventType.REMEDIATION_FAILED,
        "web",
        "remediation of m1 failed",
        5.0,
        machine="m1",
        check="health",
        incident="I1",
        severity=Severity.CRITICAL,
        firing=False,
        details={"error": "boom", "at": Path("/x")},  # what JSON cannot hold is kept as text
    )
    store.events.add(event)
    store.events.add(event)  # delivered twice by the bus: stored once (same id)
    store.events.add(Event(EventType.MACHINE_RECOVERED, "db", "m9 recovered", 6.0, machine="m9"))
    rows = await store.events.recent(service="web")
    assert rows == [
        {
            "id": event.id,
            "timestamp": 5.0,
            "type": "remediation.failed",
            "service": "web",
            "machine": "m1",
            "check": "health",
            "incident": "I1",
            "severity": "critical",
            "status": "resolved",
            "summary": "remediation of m1 failed",
            "details": {"error": "boom", "at": "/x"},
        }
    ]
    by_type = await store.events.recent(types=["machine.recovered", "incident.opened"])
    assert [r["summary"] for r in by_type] == ["m9 recovered"]
