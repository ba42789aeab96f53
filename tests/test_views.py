"""What the API, the CLI and the status page show of remediation (healerd.remediation.views), through the engine
of tests/remediation_rig.py: the incident list and one incident with its steps and timeline, why healerd is
not acting on a service, and the engine's modes and counts."""

from __future__ import annotations

from typing import Any

from remediation_rig import Rig

from healerd.config import Mode
from healerd.remediation.incidents import IncidentState
from healerd.remediation.reconcilers import IncidentReconciler
from healerd.remediation.views import timeline


async def fleet_of(rig: Rig, *ids: str) -> None:
    for i, m in enumerate(ids):
        await rig.add(m, launched_at=str(rig.t0 - 100 + i))
    rig.up(*ids)


def event(ts: float, incident: str, type_: str, summary: str) -> dict[str, Any]:
    return {"timestamp": ts, "incident": incident, "type": type_, "summary": summary}


def step(
    index: int, action: str, started: float, ended: float | None, state: str, error: str | None = None
) -> dict[str, Any]:
    return {
        "index": index,
        "action": action,
        "started_at": started,
        "ended_at": ended,
        "state": state,
        "attempts": 2,
        "error": error,
    }


def test_a_timeline_is_the_incidents_events_and_its_steps_in_time_order() -> None:
    events = [
        event(10.0, "I-1", "incident.opened", "incident I-1 opened"),
        event(11.0, "I-2", "incident.opened", "another incident"),
        event(16.0, "I-1", "incident.failed", "escalated"),
    ]
    steps = [
        step(0, "rotation.remove", 12.0, 13.0, "succeeded"),
        step(1, "machine.launch_replacement", 14.0, 15.0, "failed", "quota exceeded"),
        step(2, "notify", 17.0, None, "running"),
    ]
    assert [(t["timestamp"], t["kind"], t["type"], t["summary"]) for t in timeline("I-1", events, steps)] == [
        (10.0, "event", "incident.opened", "incident I-1 opened"),
        (12.0, "step", "step.rotation.remove", "step 1 rotation.remove started (attempt 2)"),
        (13.0, "step", "step.rotation.remove", "step 1 rotation.remove succeeded"),
        (14.0, "step", "step.machine.launch_replacement", "step 2 machine.launch_replacement started (attempt 2)"),
        (15.0, "step", "step.machine.launch_replacement", "step 2 machine.launch_replacement failed: quota exceeded"),
        (16.0, "event", "incident.failed", "escalated"),
        (17.0, "step", "step.notify", "step 3 notify started (attempt 2)"),  # still running: no end yet
    ]


async def test_the_incident_list_shows_each_incident_and_filters_by_state(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0")
    for tick in range(3):
        await rig.engine.reconcile(rig.t0 + tick)
        await rig.settle()
    await rig.engine.controls.set_mode(Mode.OBSERVE)
    rig.down("web-1")
    await rig.engine.reconcile(rig.t0 + 3)

    listed = await rig.engine.views.incident_list()
    assert sorted((i["machine"], i["state"]) for i in listed) == [("web-0", "resolved"), ("web-1", "open")]
    resolved = next(i for i in listed if i["machine"] == "web-0")
    assert resolved["replacement"] == rig.provider.launched[0] and resolved["resolved_at"] is not None
    assert resolved["playbook"] == "replace-machine" and resolved["held"] is None
    held = next(i for i in listed if i["machine"] == "web-1")
    assert held["held"]["reason"] == "observe" and held["resolved_at"] is None
    assert [i["machine"] for i in await rig.engine.views.incident_list(state="open")] == ["web-1"]
    assert len(await rig.engine.views.incident_list(limit=1)) == 1


async def test_one_incident_shows_its_steps_and_timeline(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0")
    await rig.engine.reconcile(rig.t0)
    await rig.settle()
    await rig.store.flush()
    (inc,) = rig.engine.book.active.values()

    view = await rig.engine.views.incident_view(inc.id)

    assert view is not None and (view["id"], view["state"]) == (inc.id, "remediated")
    actions = list(rig.engine.runbook.playbooks["replace-machine"].actions)
    assert [(s["action"], s["state"]) for s in view["steps"]] == [(a, "succeeded") for a in actions]
    stamps = [t["timestamp"] for t in view["timeline"]]
    assert stamps == sorted(stamps)
    types = [t["type"] for t in view["timeline"]]
    assert types[0] == "incident.opened" and "machine.quarantined" in types
    assert [t for t in types if t.startswith("step.")] == [f"step.{a}" for a in actions for _ in (0, 1)]
    assert await rig.engine.views.incident_view("no-such-incident") is None


async def test_why_not_acting_names_each_held_incident_and_the_storm_cooldown_left(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()  # max_unhealthy 50% of 3: two machines down is a storm
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0", "web-1")
    now = rig.t0 + 1
    await rig.reconciler(IncidentReconciler).reconcile(rig.service, now)

    why = rig.engine.views.why_not_acting("web", now + 100)
    assert sorted(h["machine"] for h in why["held"]) == ["web-0", "web-1"]
    assert all(h["reason"] == "max_unhealthy" and h["what_to_do"] for h in why["held"])
    assert {h["incident"] for h in why["held"]} == set(rig.engine.book.active)
    until = now + 300  # storm_cooldown
    assert why["storm_cooldown"] == {"until": until, "seconds_left": 200.0, "what_to_do": "healerd storm clear web"}

    assert rig.engine.views.why_not_acting("web", until)["storm_cooldown"] is None  # it has ended by then
    assert rig.engine.views.why_not_acting("other", now) == {"held": [], "storm_cooldown": None}


async def test_the_status_shows_the_modes_and_the_counts(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(mode=Mode.OBSERVE)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    assert rig.engine.views.status() == {
        "mode": "observe",
        "paused": False,
        "changed": None,
        "service_modes": {"web": "observe"},
        "incidents_open": 0,
        "remediating": 0,
    }

    rig.down("web-0")
    await rig.engine.reconcile(rig.t0)
    await rig.engine.controls.set_mode(Mode.DRY_RUN, "web")
    await rig.engine.controls.set_paused(True)
    await rig.engine.controls.record_change("remediation paused", "oncall-primary", rig.t0)
    (inc,) = rig.engine.book.active.values()
    inc.state = IncidentState.REMEDIATING  # as while its playbook runs
    status = rig.engine.views.status()
    assert (status["mode"], status["paused"], status["service_modes"]) == ("observe", True, {"web": "dry-run"})
    assert (status["incidents_open"], status["remediating"]) == (1, 1)
    assert status["changed"] == {"what": "remediation paused", "by": "oncall-primary", "at": rig.t0}
    await rig.engine.controls.load()  # kept in the store: a restart still says who paused
    assert rig.engine.views.status()["changed"]["by"] == "oncall-primary"
