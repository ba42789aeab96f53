"""The escalation ladder (repair before replace), through the remediation rig: a restart that mends the machine
keeps it (same id, no launch, no quarantine, back in rotation); one that does not hands on to the replacement;
a machine repaired too often goes straight to the last rung; a machine healerd can neither repair nor replace is
taken out of rotation until it passes its checks again. And the ladder's pure decisions, at their edges."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from remediation_rig import Rig

from healerd.config.ladder import MaxRepairs
from healerd.events import EventType
from healerd.remediation.incidents import IncidentState
from healerd.remediation.ladder import RungOutcome, RungResult, first_rung, next_rung, rung_outcome
from healerd.remediation.reconcilers import IncidentReconciler

LADDER = "{max_unhealthy: 50%, ladder: [{playbook: restart-machine, timeout: 20s}, {playbook: replace-machine}]}"


async def fleet_of(rig: Rig, *ids: str) -> None:
    for i, m in enumerate(ids):
        await rig.add(m, launched_at=str(rig.t0 - 100 + i), image_version="v1")
    rig.up(*ids)


def rungs(rig: Rig, playbook: str, outcome: str) -> float | None:
    return rig.sample("healerd_remediation_rungs_total", service="web", playbook=playbook, outcome=outcome)


async def remediate(rig: Rig, now: float) -> None:
    """One pass of the incident reconciler, and the remediations it started run to their end."""
    await rig.reconciler(IncidentReconciler).reconcile(rig.service, now)
    for _ in range(50):  # a rung may hand on to the next one, started by the next pass
        if not rig.engine.runbook.running:
            return
        await rig.settle()
    raise AssertionError("remediations still running")


async def test_a_restart_that_mends_the_machine_keeps_it_and_resolves_the_incident(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(remediation=LADDER)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.provider.on_restart = lambda mid: rig.up(mid)  # the frozen process comes back and answers
    rig.down("web-0")
    await remediate(rig, rig.t0 + 1)

    assert rig.provider.restarted == ["web-0"]
    assert (rig.provider.launched, rig.provider.quarantined) == ([], [])  # 0 launches, 0 quarantines
    assert rig.engine.book.active == {}
    (resolved,) = rig.of(EventType.INCIDENT_RESOLVED)
    assert "healed by restart-machine" in resolved.summary
    assert "web-0" in rig.rotation()  # back in rotation, the same machine
    assert (
        rig.sample("healerd_remediation_rungs_total", service="web", playbook="restart-machine", outcome="healed") == 1
    )
    (healed,) = rig.of(EventType.REMEDIATION_SUCCEEDED)
    assert healed.details["healed_by"] == "restart-machine"


async def test_a_fault_a_restart_does_not_mend_escalates_to_quarantine_and_replacement(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(remediation=LADDER.replace("timeout: 20s", "timeout: 3s"))
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0")  # and a restart changes nothing
    await rig.reconciler(IncidentReconciler).reconcile(rig.service, rig.t0 + 1)
    await rig.settle()
    (inc,) = rig.engine.book.active.values()
    assert (inc.state, inc.playbook) == (IncidentState.OPEN, "replace-machine")  # the next rung, through the gates
    assert "web-0" not in rig.rotation()  # out of rotation while it is worked on
    (escalated,) = rig.of(EventType.REMEDIATION_ESCALATED)
    assert escalated.details["tried"] == "restart-machine" and escalated.details["outcome"] == "timed_out"

    await remediate(rig, rig.t0 + 5)
    assert rig.provider.restarted == ["web-0"] and rig.provider.quarantined == ["web-0"]
    assert inc.state is IncidentState.REMEDIATED
    outcomes = {
        (p, o): rig.sample("healerd_remediation_rungs_total", service="web", playbook=p, outcome=o)
        for p, o in (("restart-machine", "timed_out"), ("replace-machine", "replaced"))
    }
    assert outcomes == {("restart-machine", "timed_out"): 1.0, ("replace-machine", "replaced"): 1.0}
    view = await rig.engine.views.incident_view(inc.id)
    assert view is not None
    said = [t["summary"] for t in view["timeline"]]
    assert any("restart-machine did not mend web-0" in line for line in said), said
    assert any(line.startswith("rung 2 step 2 machine.quarantine") for line in said), said


async def test_a_machine_repaired_max_repairs_times_goes_straight_to_the_last_rung(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(remediation=LADDER.replace("}]}", "}], max_repairs: {count: 2, per: 1h}}"))
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.provider.on_restart = lambda mid: rig.up(mid)
    for second in (1, 2):
        rig.down("web-0")
        await remediate(rig, rig.t0 + second)
    assert rig.provider.restarted == ["web-0", "web-0"] and rig.engine.book.active == {}

    rig.down("web-0")  # a third time within the hour
    await remediate(rig, rig.t0 + 3)
    assert rig.provider.restarted == ["web-0", "web-0"]  # not restarted again
    assert rig.provider.quarantined == ["web-0"]
    (inc,) = rig.engine.book.active.values()
    assert "repaired 2 times" in inc.details["rungs_skipped"]
    assert (
        rig.sample("healerd_remediation_rungs_total", service="web", playbook="restart-machine", outcome="skipped") == 1
    )


@pytest.mark.parametrize(
    ("rungs", "repairs", "limit", "start"),
    [
        (3, 0, None, 0),
        (3, 99, None, 0),  # no limit set
        (3, 1, MaxRepairs(count=2), 0),
        (3, 2, MaxRepairs(count=2), 2),  # at the limit: the last rung
        (1, 5, MaxRepairs(count=2), 0),  # one rung: it is the last one already
    ],
)
def test_where_a_remediation_starts(rungs: int, repairs: int, limit: MaxRepairs | None, start: int) -> None:
    assert first_rung(rungs, repairs, limit) == start


@pytest.mark.parametrize(
    ("result", "up", "last", "outcome", "following"),
    [
        (RungResult(True, {}), True, False, RungOutcome.HEALED, None),
        (RungResult(True, {"replacement": "web-9"}), False, False, RungOutcome.REPLACED, None),
        (RungResult(True, {"quarantine": {}}), False, True, RungOutcome.REPLACED, None),
        (RungResult(True, {}), False, False, RungOutcome.FAILED, 1),  # ran to its end, still down: next rung
        (RungResult(True, {}), False, True, RungOutcome.DONE, None),  # the last rung did what it could
        (RungResult(False, error="x"), True, False, RungOutcome.FAILED, 1),
        (RungResult(False, error="x", timed_out=True), False, False, RungOutcome.TIMED_OUT, 1),
        (RungResult(False, error="x"), False, True, RungOutcome.FAILED, None),  # nothing left: a human
    ],
)
def test_what_a_rungs_end_means(
    result: RungResult, up: bool, last: bool, outcome: RungOutcome, following: int | None
) -> None:
    got = rung_outcome(result, up, last=last)
    assert got is outcome
    assert next_rung(0, 1 if last else 2, got) == following


async def test_the_timeline_names_each_rung(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(remediation=LADDER)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.provider.on_restart = lambda mid: asyncio.get_running_loop().call_later(0.05, rig.up, mid)
    rig.down("web-0")
    await remediate(rig, rig.t0 + 1)
    (inc,) = await rig.engine.views.incident_list(state="resolved")
    view = await rig.engine.views.incident_view(inc["id"])
    assert view is not None
    steps = [s["action"] for s in view["steps"]]
    assert steps == ["machine.restart", "checks.await_healthy"]


def test_healerd_incidents_id_prints_each_rung_and_how_it_ended() -> None:
    from healerd.cli_incidents import ladder_lines

    tried = {"playbook": "restart-machine", "outcome": "timed_out", "error": "restart-machine did not finish within 2s"}
    on_second = {"rung": 2, "playbook": "replace-machine", "tried": [tried], "healed_by": None, "skipped": None}
    assert ladder_lines(on_second) == [
        "  rung 1: restart-machine timed_out: restart-machine did not finish within 2s",
        "  rung 2: replace-machine (now)",
    ]
    healed = {"rung": 1, "playbook": "restart-machine", "tried": [], "healed_by": "restart-machine", "skipped": None}
    assert ladder_lines(healed) == ["  rung 1: restart-machine healed it (kept, back in rotation)"]
    assert ladder_lines(None) == []


async def test_what_the_provider_said_during_a_step_shows_in_the_incidents_timeline(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(remediation=LADDER)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.provider.on_restart = lambda mid: rig.up(mid)
    said = "--- provider restart at 2026-12-07T00:00:00Z (0.20s, exit 0) stderr ---\nvirsh: domain web-0 restarted\n"
    rig.provider.said = lambda machine_id, since: said if machine_id == "web-0" else ""  # type: ignore[method-assign]
    rig.down("web-0")
    await remediate(rig, rig.t0 + 1)
    (inc,) = await rig.engine.views.incident_list(state="resolved")
    view = await rig.engine.views.incident_view(inc["id"])
    assert view is not None
    ends = [t["summary"] for t in view["timeline"] if t["summary"].startswith("step 1 machine.restart succeeded")]
    assert ends == ["step 1 machine.restart succeeded; provider stderr: virsh: domain web-0 restarted"]
    assert view["steps"][0]["outputs"]["provider_said"] == said


async def test_a_healed_machine_the_rotation_refuses_is_returned_once_it_takes_it(
    rig_factory: Any, monkeypatch: Any
) -> None:
    rig: Rig = await rig_factory(remediation=LADDER)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.provider.on_restart = lambda mid: rig.up(mid)
    rotation = rig.engine.fleet.rotations["web"]
    add = rotation.add

    async def away(machine: Any) -> None:
        raise RuntimeError("rotation file unwritable")

    monkeypatch.setattr(rotation, "add", away)
    rig.down("web-0")
    await remediate(rig, rig.t0 + 1)
    (inc,) = rig.engine.book.active.values()  # healed, not yet back: not left remediating
    assert inc.state is IncidentState.REMEDIATED and inc.details["out_of_rotation"]
    assert "web-0" not in rig.rotation()

    monkeypatch.setattr(rotation, "add", add)  # the rotation works again
    await rig.reconciler(IncidentReconciler).reconcile(rig.service, rig.t0 + 2)
    assert rig.engine.book.active == {} and "web-0" in rig.rotation()
    (resolved,) = rig.of(EventType.INCIDENT_RESOLVED)
    assert "healed by restart-machine; back in rotation" in resolved.summary


def test_a_rung_timeout_on_a_replacing_playbook_is_refused(tmp_path: Any) -> None:
    from test_config_ladder import CHECK, refused
    from test_config_table import MANAGED

    text = "daemon:\n  state_dir: ./state\n" + MANAGED + CHECK
    text += "    remediation: {ladder: [{playbook: restart-machine}, {playbook: replace-machine, timeout: 5m}]}\n"
    said = refused(tmp_path, text)
    assert "ladder[1].timeout: rung 'replace-machine' launches a replacement" in said
