"""The remediation reconcilers (healerd.remediation.reconcilers), one service at a time with an explicit `now`: what an
operator would notice (incidents, held-back reasons, launches, retirements, quarantines) and what they log.

The bench (tests/remediation_rig.py) is a real store, health book, monitor, file rotation and registry; only
the provider is a recording fake.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from remediation_rig import Rig

from healerd.config import Mode
from healerd.events import EventType
from healerd.health import Condition
from healerd.machines import PROBATION, Lifecycle, Machine, Origin
from healerd.remediation.controls import Controls
from healerd.remediation.incidents import IncidentState
from healerd.remediation.reconcilers import (
    FillReconciler,
    IncidentReconciler,
    ProbationReconciler,
    SurplusReconciler,
    incident_targets,
)
from healerd.remediation.retention import RetentionReconciler, retention_plan
from healerd.results import Status

Logs = list[dict[str, Any]]


def lines(logs: Logs, event: str) -> Logs:
    return [e for e in logs if e["event"] == event]


async def fleet_of(rig: Rig, *ids: str) -> None:
    for i, m in enumerate(ids):
        await rig.add(m, launched_at=str(rig.t0 - 100 + i))
    rig.up(*ids)


# -- incidents ------------------------------------------------------------------------------------------------
async def test_observe_opens_one_incident_and_says_once_why_it_holds_back(rig_factory: Any, logs: Logs) -> None:
    rig = await rig_factory(mode=Mode.OBSERVE)
    incidents = rig.reconciler(IncidentReconciler)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0")
    for tick in range(3):
        await incidents.reconcile(rig.service, rig.t0 + tick)

    (inc,) = rig.engine.book.active.values()
    assert (inc.machine, inc.state) == ("web-0", IncidentState.OPEN)
    assert inc.details["suppressed"] == "observe"
    assert len(rig.of(EventType.INCIDENT_OPENED)) == 1
    (held,) = rig.of(EventType.REMEDIATION_SUPPRESSED)
    assert held.details["reason"] == "observe" and held.incident == inc.id
    assert rig.sample("healerd_remediation_suppressed_total", service="web", reason="observe") == 1.0
    (line,) = lines(logs, "remediation held back")
    assert (line["service"], line["machine"], line["incident"], line["reason"]) == ("web", "web-0", inc.id, "observe")
    assert rig.provider.launched == [] and rig.provider.quarantined == []
    assert rig.rotation() == {"web-0", "web-1", "web-2"}  # observing changes nothing


async def test_the_records_of_a_pass_carry_the_time_of_its_decision(rig_factory: Any) -> None:
    rig = await rig_factory(mode=Mode.OBSERVE)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0")
    decided = rig.t0 + 7.25  # a pass's `now`, not the clock's time when the record was written
    await rig.reconciler(IncidentReconciler).reconcile(rig.service, decided)
    (inc,) = rig.engine.book.active.values()
    stored = await rig.store.incidents.get(inc.id)
    assert stored is not None
    assert (stored.opened_at, stored.updated_at, inc.details["held_since"]) == (decided, decided, decided)
    (view,) = await rig.engine.views.incident_list()
    assert view["held"]["since"] == decided


async def test_an_observed_incident_resolves_when_its_machine_recovers(rig_factory: Any, logs: Logs) -> None:
    rig = await rig_factory(mode=Mode.OBSERVE)
    incidents = rig.reconciler(IncidentReconciler)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0")
    await incidents.reconcile(rig.service, rig.t0 + 1)
    (inc,) = rig.engine.book.active.values()

    rig.up("web-0")
    await incidents.reconcile(rig.service, rig.t0 + 2)
    await incidents.reconcile(rig.service, rig.t0 + 3)

    assert rig.engine.book.active == {}
    (resolved,) = rig.of(EventType.INCIDENT_RESOLVED)
    assert resolved.incident == inc.id and "web-0 recovered (up)" in resolved.summary
    (stored,) = await rig.engine.views.incident_list()
    assert stored["state"] == "resolved" and stored["resolved_at"] is not None
    assert len(lines(logs, "incident resolved")) == 1
    assert len(rig.of(EventType.INCIDENT_OPENED)) == 1  # never opened again while it stays up


async def test_a_new_reason_is_said_again_and_dry_run_logs_each_step_once(rig_factory: Any, logs: Logs) -> None:
    rig = await rig_factory(mode=Mode.OBSERVE)
    incidents = rig.reconciler(IncidentReconciler)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0")
    await incidents.reconcile(rig.service, rig.t0 + 1)
    await rig.engine.controls.set_mode(Mode.DRY_RUN)
    await incidents.reconcile(rig.service, rig.t0 + 2)
    await incidents.reconcile(rig.service, rig.t0 + 3)

    assert [e["reason"] for e in lines(logs, "remediation held back")] == ["observe", "dry_run"]
    steps = [(e["step"], e["action"]) for e in lines(logs, "dry-run: would run step")]
    assert steps == list(enumerate(rig.engine.runbook.playbooks["replace-machine"].actions, start=1))
    assert rig.sample("healerd_remediation_suppressed_total", service="web", reason="dry_run") == 1.0
    assert rig.provider.launched == []


async def test_max_unhealthy_holds_everything_then_the_persisted_cooldown_says_when(rig_factory: Any) -> None:
    rig = await rig_factory()  # auto; max_unhealthy 50% of 3 = 1 machine
    incidents = rig.reconciler(IncidentReconciler)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0", "web-1")
    await incidents.reconcile(rig.service, rig.t0 + 1)

    assert {i.details["suppressed"] for i in rig.engine.book.active.values()} == {"max_unhealthy"}
    assert rig.sample("healerd_remediation_suppressed_total", service="web", reason="max_unhealthy") == 2.0
    assert all(e.severity.value == "critical" for e in rig.of(EventType.REMEDIATION_SUPPRESSED))
    restarted = Controls(lambda: rig.config, rig.store, cli_mode=None, wake=lambda: None)
    await restarted.load()
    assert restarted.storm_until == {"web": rig.t0 + 1 + 300}  # remediation.storm_cooldown, persisted

    rig.up("web-1")
    await incidents.reconcile(rig.service, rig.t0 + 2)  # web-1's incident ends (it still counted this pass)
    next_at = await incidents.reconcile(rig.service, rig.t0 + 3)

    (left,) = rig.engine.book.active.values()
    assert (left.machine, left.details["suppressed"]) == ("web-0", "storm_cooldown")
    assert next_at == rig.engine.controls.storm_until["web"] == rig.t0 + 2 + 300  # the gate's retry_at
    assert rig.provider.launched == []


async def test_auto_mode_remediates_with_exactly_one_replacement(rig_factory: Any) -> None:
    rig = await rig_factory()
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0")
    for tick in range(3):
        await rig.engine.reconcile(rig.t0 + tick)
        await rig.settle()

    (inc,) = await rig.engine.views.incident_list()
    assert inc["state"] == "resolved"  # remediated, then the service was optimal again
    assert rig.provider.launched == [inc["replacement"]]
    replacement = rig.monitor.machine("web", inc["replacement"])
    assert replacement is not None and replacement.origin is Origin.INCIDENT
    assert replacement.attributes["launched_for"] == inc["id"]  # what the store keeps, as before
    assert rig.lifecycle("web-0") is Lifecycle.QUARANTINED and rig.provider.quarantined == ["web-0"]
    assert rig.rotation() == {"web-1", "web-2", inc["replacement"]}
    succeeded = {"service": "web", "playbook": "replace-machine", "outcome": "succeeded"}
    assert rig.sample("healerd_remediations_total", **succeeded) == 1.0
    assert len(rig.of(EventType.REMEDIATION_STARTED)) == 1
    assert rig.sample("healerd_quarantined_machines", service="web") == 1.0


async def test_a_remediated_incident_resolves_only_once_the_service_is_optimal(rig_factory: Any) -> None:
    rig = await rig_factory()
    incidents = rig.reconciler(IncidentReconciler)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0")
    rig.feed("web-1", Status.WARNING, 2)  # impaired: the service stays degraded after the replacement
    await incidents.reconcile(rig.service, rig.t0 + 1)
    await rig.settle()
    (inc,) = rig.engine.book.active.values()
    await incidents.reconcile(rig.service, rig.t0 + 2)
    assert inc.state is IncidentState.REMEDIATED and inc.id in rig.engine.book.active

    rig.up("web-1")
    await incidents.reconcile(rig.service, rig.t0 + 3)
    assert rig.engine.book.active == {}
    (resolved,) = rig.of(EventType.INCIDENT_RESOLVED)
    assert "the service is optimal again" in resolved.summary


# -- probation ------------------------------------------------------------------------------------------------
async def test_a_fill_machine_enters_service_once_its_checks_pass(rig_factory: Any, logs: Logs) -> None:
    rig = await rig_factory()
    await fleet_of(rig, "web-0", "web-1")
    await rig.reconciler(FillReconciler).reconcile(rig.service, rig.t0)
    (new,) = rig.provider.launched
    assert rig.lifecycle(new) is Lifecycle.PROBATION and new not in rig.rotation()
    probation = rig.reconciler(ProbationReconciler)

    rig.feed(new, Status.OK)  # one OK of rise 2: not yet
    await probation.reconcile(rig.service, rig.t0 + 1)
    assert rig.lifecycle(new) is Lifecycle.PROBATION
    rig.feed(new, Status.OK)
    assert await probation.reconcile(rig.service, rig.t0 + 2) == math.inf
    await probation.reconcile(rig.service, rig.t0 + 3)

    assert rig.lifecycle(new) is Lifecycle.IN_SERVICE and new in rig.rotation()
    (line,) = lines(logs, "machine in service")
    assert (line["service"], line["machine"]) == ("web", new)


async def test_failures_while_booting_wait_and_after_boot_quarantine(rig_factory: Any) -> None:
    rig = await rig_factory(remediation="{boot_timeout: 10s}")
    await fleet_of(rig, "web-0", "web-1")
    await rig.reconciler(FillReconciler).reconcile(rig.service, rig.t0)
    (new,) = rig.provider.launched
    launched_at = float(rig.monitor.machines["web"][new].attributes["launched_at"])
    probation = rig.reconciler(ProbationReconciler)

    rig.feed(new, Status.CRITICAL, 2)
    next_at = await probation.reconcile(rig.service, launched_at + 5)  # still booting: not a failure yet
    assert rig.lifecycle(new) is Lifecycle.PROBATION
    assert next_at == launched_at + rig.service.remediation.probation_timeout

    await probation.reconcile(rig.service, launched_at + 11)
    assert rig.lifecycle(new) is Lifecycle.QUARANTINED and new not in rig.rotation()
    assert rig.monitor.machines["web"][new].attributes["incident"] == PROBATION


async def test_a_fill_machine_pending_past_probation_timeout_is_quarantined(rig_factory: Any) -> None:
    rig = await rig_factory(remediation="{probation_timeout: 60s}")
    await fleet_of(rig, "web-0", "web-1")
    await rig.reconciler(FillReconciler).reconcile(rig.service, rig.t0)
    (new,) = rig.provider.launched
    launched_at = float(rig.monitor.machines["web"][new].attributes["launched_at"])
    probation = rig.reconciler(ProbationReconciler)

    await probation.reconcile(rig.service, launched_at + 60)
    assert rig.lifecycle(new) is Lifecycle.PROBATION
    await probation.reconcile(rig.service, launched_at + 61)
    assert rig.lifecycle(new) is Lifecycle.QUARANTINED and rig.provider.quarantined == [new]


# -- fill ---------------------------------------------------------------------------------------------------
async def test_fill_launches_up_to_desired_once(rig_factory: Any, logs: Logs) -> None:
    rig = await rig_factory()
    await fleet_of(rig, "web-0")
    fill = rig.reconciler(FillReconciler)
    for tick in range(3):
        await fill.reconcile(rig.service, rig.t0 + tick)

    assert len(rig.provider.launched) == 2
    assert {rig.monitor.machines["web"][m].origin for m in rig.provider.launched} == {Origin.FILL}
    (line,) = lines(logs, "launching machines to reach desired")
    assert (line["service"], line["missing"]) == ("web", 2)


async def test_fill_asks_again_for_a_machine_whose_launch_failed(rig_factory: Any, logs: Logs) -> None:
    rig = await rig_factory()
    await fleet_of(rig, "web-0", "web-1")
    fill = rig.reconciler(FillReconciler)
    rig.provider.launch_error = "provider lab: loopback-httpd launch: exited 1"
    await fill.reconcile(rig.service, rig.t0)
    (stalled,) = [m for m in rig.monitor.machines["web"].values() if m.lifecycle is Lifecycle.LAUNCHING]
    (line,) = lines(logs, "launch failed")
    assert line["error"] == "provider lab: loopback-httpd launch: exited 1"

    rig.provider.launch_error = None
    for tick in range(1, 3):
        await fill.reconcile(rig.service, rig.t0 + tick)
        await asyncio.gather(*fill.relaunching.values())  # asked for again in the background

    assert rig.provider.launched == [stalled.id], "the same machine, asked for once more, and no other"
    assert rig.monitor.machines["web"][stalled.id].lifecycle is Lifecycle.PROBATION


async def test_fill_held_back_says_so_once(rig_factory: Any, logs: Logs) -> None:
    rig = await rig_factory()
    await fleet_of(rig, "web-0", "web-1")
    await rig.engine.controls.set_paused(True)
    fill = rig.reconciler(FillReconciler)
    for tick in range(3):
        assert await fill.reconcile(rig.service, rig.t0 + tick) == math.inf

    assert rig.provider.launched == []
    (line,) = lines(logs, "fleet below desired, not launching")
    assert (line["service"], line["reason"], line["missing"]) == ("web", "paused", 1)


async def test_fill_never_launches_around_an_incident(rig_factory: Any) -> None:
    rig = await rig_factory(mode=Mode.OBSERVE)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0")
    await rig.reconciler(IncidentReconciler).reconcile(rig.service, rig.t0)
    assert len(rig.engine.book.active) == 1
    await rig.monitor.put_machine(Machine("web", "web-1", "127.0.0.1:1", Lifecycle.TERMINATED))  # one short now
    await rig.engine.controls.set_mode(Mode.AUTO)

    await rig.reconciler(FillReconciler).reconcile(rig.service, rig.t0 + 1)
    assert rig.provider.launched == []  # the incident handles (or escalated) the gap


# -- surplus ------------------------------------------------------------------------------------------------
async def test_surplus_is_retired_newest_first_down_to_desired(rig_factory: Any, logs: Logs) -> None:
    rig = await rig_factory(desired=2)
    await fleet_of(rig, "web-a", "web-b", "web-c", "web-d")  # launched in that order
    surplus = rig.reconciler(SurplusReconciler)
    for tick in range(4):
        await surplus.reconcile(rig.service, rig.t0 + tick)

    assert rig.provider.retired == ["web-d", "web-c"]
    assert rig.rotation() == {"web-a", "web-b"}
    assert [e.machine for e in rig.of(EventType.MACHINE_RETIRED)] == ["web-d", "web-c"]
    assert rig.provider.quarantined == []  # retired, never quarantined
    assert [(e["service"], e["machine"]) for e in lines(logs, "machine retired")] == [
        ("web", "web-d"),
        ("web", "web-c"),
    ]


async def test_surplus_is_never_retired_below_desired_healthy(rig_factory: Any) -> None:
    rig = await rig_factory(desired=2)
    await fleet_of(rig, "web-a", "web-b", "web-c")
    rig.down("web-a")
    await rig.reconciler(SurplusReconciler).reconcile(rig.service, rig.t0 + 1)
    assert rig.provider.retired == []
    assert rig.rotation() == {"web-a", "web-b", "web-c"}


# -- retention ----------------------------------------------------------------------------------------------
async def test_retention_warns_once_then_terminates_at_keep_for(rig_factory: Any, logs: Logs) -> None:
    rig = await rig_factory(remediation="{keep_for: 1h, keep_warning: 10m}")
    await fleet_of(rig, "web-0", "web-1", "web-2")
    await rig.engine.quarantines.quarantine(rig.service, "web-0", PROBATION, False)
    since = float(rig.monitor.machines["web"]["web-0"].attributes["quarantined_at"])
    retention = rig.reconciler(RetentionReconciler)

    assert await retention.reconcile(rig.service, since + 2999) == since + 3000  # when to warn
    assert not [e for e in rig.of(EventType.MACHINE_QUARANTINED) if "retention" in e.details]
    assert await retention.reconcile(rig.service, since + 3000) == since + 3600
    assert await retention.reconcile(rig.service, since + 3300) == since + 3600
    (warning,) = [e for e in rig.of(EventType.MACHINE_QUARANTINED) if "retention" in e.details]
    assert warning.firing and warning.details["terminate_at"] == since + 3600
    assert "will be terminated in 600s" in warning.summary
    assert rig.provider.terminated == []

    assert await retention.reconcile(rig.service, since + 3600) == math.inf
    assert rig.provider.terminated == ["web-0"]
    assert rig.lifecycle("web-0") is None  # terminated: no longer part of the fleet
    assert len(lines(logs, "quarantine retention ending soon")) == 1
    (ended,) = lines(logs, "quarantine retention ended; machine terminated")
    assert (ended["service"], ended["machine"], ended["incident"]) == ("web", "web-0", PROBATION)
    assert rig.sample("healerd_quarantined_machines", service="web") == 0.0


# -- the engine's pass ----------------------------------------------------------------------------------------
async def test_the_engine_sleeps_until_the_earliest_time_a_reconciler_asks_for(rig_factory: Any) -> None:
    rig = await rig_factory(remediation="{keep_for: 1h, keep_warning: 10m, probation_timeout: 2h}")
    await fleet_of(rig, "web-0", "web-1", "web-2")
    await rig.engine.quarantines.quarantine(rig.service, "web-0", PROBATION, False)
    since = float(rig.monitor.machines["web"]["web-0"].attributes["quarantined_at"])
    await rig.reconciler(FillReconciler).reconcile(rig.service, since)  # a fill machine on probation
    (new,) = rig.provider.launched
    launched_at = float(rig.monitor.machines["web"][new].attributes["launched_at"])

    assert await rig.engine.reconcile(since + 1) == since + 3000  # the retention warning comes first
    assert await rig.engine.reconcile(since + 3001) == min(since + 3600, launched_at + 7200)


async def test_surplus_retires_a_machine_released_back_on_an_old_version_not_the_known_good_replacement(
    rig_factory: Any, logs: Logs
) -> None:
    # v2 was promoted; web-old (v1) was quarantined and replaced by web-new (v2, the newest machine), then
    # released back to rotation: one machine too many, and the one to go is the v1 machine
    rig = await rig_factory(desired=3)
    rig.engine.fleet.known_good["demo-web"] = "v2"
    await rig.add("web-old", image_version="v1", launched_at=str(rig.t0 - 1000), launched_for="release")
    for i, mid in enumerate(("web-a", "web-b")):
        await rig.add(mid, image_version="v2", launched_at=str(rig.t0 - 100 + i))
    await rig.add("web-new", image_version="v2", launched_at=str(rig.t0 - 10))
    rig.up("web-old", "web-a", "web-b", "web-new")
    surplus = rig.reconciler(SurplusReconciler)
    for tick in range(3):
        await surplus.reconcile(rig.service, rig.t0 + tick)

    assert rig.provider.retired == ["web-old"]
    assert rig.rotation() == {"web-a", "web-b", "web-new"}
    (retired,) = rig.of(EventType.MACHINE_RETIRED)
    assert "it runs v1, not the known-good v2" in retired.summary, retired.summary


async def test_the_held_gauge_counts_open_incidents_by_the_gate_holding_them_now(rig_factory: Any) -> None:
    """healerd_incidents_held follows the hold, not the decisions: 2 while both are held, by their gate now, 0
    once it ends; what to do comes with the figures, once per change of reason."""
    rig = await rig_factory()  # auto; max_unhealthy 50% of 3 = 1 machine
    incidents = rig.reconciler(IncidentReconciler)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    rig.down("web-0", "web-1")
    for tick in range(1, 4):
        await incidents.reconcile(rig.service, rig.t0 + tick)

    assert rig.sample("healerd_incidents_held", service="web", reason="max_unhealthy") == 2.0
    assert rig.sample("healerd_incidents_held", service="web", reason="storm_cooldown") == 0.0
    held = [i.held for i in rig.engine.book.active.values()]
    assert all(h and h["reason"] == "max_unhealthy" and "more than max_unhealthy (1)" in h["detail"] for h in held)
    assert all(h and h["what_to_do"].startswith("check the monitoring path") for h in held)
    said = rig.of(EventType.REMEDIATION_SUPPRESSED)
    assert len(said) == 2 and all("What to do: check the monitoring path" in e.summary for e in said)
    assert all(e.details["held"]["reason"] == "max_unhealthy" for e in said)

    rig.up("web-1")
    await incidents.reconcile(rig.service, rig.t0 + 4)
    await incidents.reconcile(rig.service, rig.t0 + 5)
    assert rig.sample("healerd_incidents_held", service="web", reason="max_unhealthy") == 0.0
    assert rig.sample("healerd_incidents_held", service="web", reason="storm_cooldown") == 1.0
    (left,) = rig.engine.book.active.values()
    assert left.held is not None and "healerd storm clear web" in left.held["what_to_do"]

    assert (await rig.engine.clear_storm("web", "alice"))["cleared"] is True
    await incidents.reconcile(rig.service, rig.t0 + 6)
    assert rig.sample("healerd_incidents_held", service="web", reason="storm_cooldown") == 0.0
    assert left.state is IncidentState.REMEDIATING
    (cleared,) = rig.of(EventType.STORM_CLEARED)
    assert cleared.incident == left.id and "by alice" in cleared.summary


# -- retention, the pure plan -----------------------------------------------------------------------------
def _quarantined(mid: str, since: float, **attrs: str) -> Machine:
    return Machine("web", mid, "127.0.0.1:1", Lifecycle.QUARANTINED, {"quarantined_at": str(since), **attrs})


@pytest.mark.parametrize(
    ("machine", "now", "terminated", "warned", "next_at"),
    [
        (_quarantined("q", 0.0), 100.0, [], [], 3000.0),  # an hour to go: look again when the warning is due
        (_quarantined("q", 0.0), 3000.0, [], ["q"], 3600.0),  # 10 minutes left: warn, then look at the end
        (_quarantined("q", 0.0, retention_warned="3000"), 3100.0, [], [], 3600.0),  # warned once only
        (_quarantined("q", 0.0), 3600.0, ["q"], [], math.inf),  # keep_for reached
        (_quarantined("q", 0.0), 9999.0, ["q"], [], math.inf),
        (Machine("web", "m", "127.0.0.1:1", Lifecycle.IN_SERVICE), 9999.0, [], [], math.inf),  # not quarantined
    ],
)
def test_the_retention_plan_terminates_at_keep_for_after_one_warning(
    machine: Machine, now: float, terminated: list[str], warned: list[str], next_at: float
) -> None:
    plan = retention_plan([machine], keep=3600.0, warning=600.0, now=now)
    assert [m.id for m in plan.terminate] == terminated
    assert [m.id for m, _ in plan.warn] == warned
    assert plan.next_at == next_at


# -- which failures need an incident, the pure decision ---------------------------------------------------
@pytest.mark.parametrize(
    ("conditions", "known", "candidates", "targets"),
    [
        ({"a": Condition.UP, "b": Condition.DOWN}, set(), set(), ["b"]),
        ({"a": Condition.DOWN, "b": Condition.DOWN}, set(), set(), ["a", "b"]),  # in the fleet's order
        ({"b": Condition.DOWN}, {"b"}, set(), []),  # one incident per failure: already open
        ({"b": Condition.DOWN}, set(), {"b"}, []),  # a rollout's candidate: its rollout rolls back
        ({"b": Condition.IMPAIRED, "c": Condition.FLAPPING, "d": Condition.PENDING}, set(), set(), []),
    ],
)
def test_an_incident_is_opened_for_each_new_failure_of_a_serving_machine(
    conditions: dict[str, Condition], known: set[str], candidates: set[str], targets: list[str]
) -> None:
    assert incident_targets(conditions, known, candidates) == targets
