"""Incidents, the step journal and the remediation log, on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

from healerd.store import Failures, IncidentRecord, Store


def incident(iid: str, state: str = "open", opened_at: float = 1.0, **details: object) -> IncidentRecord:
    return IncidentRecord(
        iid, "web", "m1", state, "replace-machine", opened_at, opened_at, None, f"{iid} is down", None, None, details
    )


async def test_an_incident_round_trips_and_a_save_replaces_it(store: Store) -> None:
    first = incident("I1", suppressed="dry_run")
    await store.incidents.save(first)
    assert await store.incidents.get("I1") == first
    done = first._replace(state="resolved", updated_at=9.0, resolved_at=9.0, replacement="m2", error="late")
    await store.incidents.save(done)
    assert await store.incidents.get("I1") == done
    assert await store.incidents.get("I9") is None


async def test_details_that_json_cannot_hold_are_stored_as_text(store: Store) -> None:
    await store.incidents.save(incident("I1", bundle=Path("/var/lib/healerd/forensics/I1")))
    stored = await store.incidents.get("I1")
    assert stored is not None and stored.details == {"bundle": "/var/lib/healerd/forensics/I1"}


async def test_unresolved_and_recent_listing_order_limit_and_state(store: Store) -> None:
    for i, state in enumerate(["open", "resolved", "remediating", "failed", "resolved"]):
        await store.incidents.save(incident(f"I{i}", state, opened_at=float(i)))
    assert sorted(r.id for r in await store.incidents.unresolved()) == ["I0", "I2", "I3"]
    assert [r.id for r in await store.incidents.recent()] == ["I4", "I3", "I2", "I1", "I0"]  # newest first
    assert [r.id for r in await store.incidents.recent(limit=2)] == ["I4", "I3"]
    assert [r.id for r in await store.incidents.recent(state="resolved")] == ["I4", "I1"]
    assert [r.id for r in await store.incidents.recent(limit=1, state="resolved")] == ["I4"]


async def test_the_step_journal_records_starts_outcomes_and_retries_in_order(store: Store) -> None:
    await store.incidents.start_step("I1", 1, "provider.launch", "running", 1, 10.0)
    await store.incidents.start_step("I1", 0, "rotation.remove", "running", 1, 5.0)
    await store.incidents.end_step("I1", 0, "succeeded", 6.0, {"removed": True}, None)
    await store.incidents.end_step("I1", 1, "failed", 11.0, {}, "quota exceeded")
    await store.incidents.start_step("I1", 1, "provider.launch", "running", 2, 12.0)  # the retry
    await store.incidents.start_step("I2", 0, "rotation.remove", "running", 1, 7.0)  # another incident
    steps = await store.incidents.steps("I1")
    assert steps == [
        {
            "index": 0,
            "action": "rotation.remove",
            "state": "succeeded",
            "attempts": 1,
            "started_at": 5.0,
            "ended_at": 6.0,
            "outputs": {"removed": True},
            "error": None,
        },
        {  # a restart clears the end and the error of the failed attempt
            "index": 1,
            "action": "provider.launch",
            "state": "running",
            "attempts": 2,
            "started_at": 12.0,
            "ended_at": None,
            "outputs": {},
            "error": None,
        },
    ]
    assert await store.incidents.steps("I3") == []


async def test_running_steps_are_marked_interrupted_and_only_those_of_the_incident(store: Store) -> None:
    await store.incidents.start_step("I1", 0, "rotation.remove", "running", 1, 1.0)
    await store.incidents.end_step("I1", 0, "succeeded", 2.0, {"x": 1}, None)
    await store.incidents.start_step("I1", 1, "provider.launch", "running", 1, 3.0)
    await store.incidents.start_step("I2", 0, "rotation.remove", "running", 1, 3.0)
    await store.incidents.mark_running_steps_interrupted("I1", 50.0)
    states = [(s["state"], s["ended_at"]) for s in await store.incidents.steps("I1")]
    assert states == [("succeeded", 2.0), ("interrupted", 50.0)]
    assert [s["state"] for s in await store.incidents.steps("I2")] == ["running"]


async def test_the_remediation_log_counts_launches_and_failures(store: Store) -> None:
    await store.incidents.log_launch("web", "m2", 100.0, "I1")
    await store.incidents.log_launch("web", "m3", 200.0, None)  # a fleet fill
    await store.incidents.log_launch("web", "m4", 300.0, "I2")
    await store.incidents.log_launch("db", "d1", 300.0, "I3")
    assert await store.incidents.launches_since("web", 150.0) == 2
    assert await store.incidents.launches_since("web", 150.0, by_incidents=True) == 1
    assert await store.incidents.launches_since("web", 0.0, by_incidents=True) == 2
    assert await store.incidents.launches_since("web", 300.0) == 0  # strictly after
    assert await store.incidents.failures("web", "m1") == Failures(0, None)
    await store.incidents.log_failure("web", "m1", 400.0, "I1")
    await store.incidents.log_failure("web", "m1", 500.0, "I4")
    await store.incidents.log_failure("web", "m9", 600.0, "I5")
    assert await store.incidents.failures("web", "m1") == Failures(2, 500.0)


async def test_an_acknowledgement_is_kept_with_the_incident(store: Store) -> None:
    """Who acknowledged it, when and what they said survive a save of the rest and a reopening of the store."""
    first = incident("I1")
    await store.incidents.save(first)
    assert (await store.incidents.get("I1")) == first and first.acked_at is None
    acked = first._replace(acked_at=5.5, acked_by="alice", ack_comment="on it: the disk is full")
    await store.incidents.save(acked)
    assert await store.incidents.get("I1") == acked
    later = acked._replace(state="resolved", resolved_at=9.0, details={"suppressed": "observe"})
    await store.incidents.save(later)
    (row,) = await store.incidents.recent()
    assert (row.acked_at, row.acked_by, row.ack_comment) == (5.5, "alice", "on it: the disk is full")
