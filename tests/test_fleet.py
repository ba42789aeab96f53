"""What healerd does to machines (healerd.remediation.fleet.Fleet), through the engine of
tests/remediation_rig.py: launches from the known-good image (one replacement per incident, ever), launches
resumed after a restart, which machines the rotation serves, entering service, retirement, quarantine."""

from __future__ import annotations

import json
from typing import Any

import pytest
from remediation_rig import Rig

from healerd.config import Config, load_config
from healerd.events import EventType
from healerd.machines import Lifecycle, Machine, Origin
from healerd.remediation.actions import StepFailed
from healerd.remediation.fleet import retirement_order
from healerd.remediation.incidents import IncidentState
from healerd.store import VersionRecord

V1 = 'v1: {command: [python3, -m, healerd.demo, --port, "{port}"]}'


def config_with(rig: Rig, versions: list[str], known_good: str) -> Config:
    """The rig's config with these image versions (all alike) and this known_good."""
    text = (rig.tmp_path / "healerd.yaml").read_text()
    lines = "\n      ".join(V1.replace("v1", v, 1) for v in versions)
    text = text.replace(V1, lines).replace("known_good: v1", f"known_good: {known_good}")
    path = rig.tmp_path / f"healerd-{known_good}.yaml"
    path.write_text(text)
    return load_config(path)


async def promote(rig: Rig, version: str, previous: str) -> None:
    """What a rollout's promotion leaves in the store."""
    record = VersionRecord("demo-web", version, "known_good", "promoted by a rollout", "rollout r1", rig.t0, {})
    await rig.store.images.promote("demo-web", record, previous, previous)


async def fleet_of(rig: Rig, *ids: str) -> None:
    for i, m in enumerate(ids):
        await rig.add(m, launched_at=str(rig.t0 - 100 + i))
    rig.up(*ids)


async def test_an_incident_gets_one_replacement_from_the_known_good_image_ever(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    fleet = rig.engine.fleet
    await fleet_of(rig, "web-0", "web-1", "web-2")
    inc = await rig.engine.book.open("web", "web-0", "replace-machine", "web-0 is down", rig.t0)

    new = await fleet.launch_replacement(rig.service, inc.id)
    assert (new.lifecycle, new.origin, new.attributes["launched_for"]) == (Lifecycle.PROBATION, Origin.INCIDENT, inc.id)
    assert new.attributes["image_version"] == "v1" and new.address.startswith("127.0.0.1:")
    again = await fleet.launch_replacement(rig.service, inc.id)  # a retried step
    assert again.id == new.id and rig.provider.launched == [new.id]
    assert new.id not in rig.rotation()  # on probation: no traffic yet
    assert await rig.store.incidents.launches_since("web", rig.t0 - 1, by_incidents=True) == 1

    await rig.engine.quarantines.quarantine(rig.service, new.id, inc.id, False)  # the replacement failed its checks
    with pytest.raises(StepFailed, match="is quarantined; not launching another") as failed:
        await fleet.launch_replacement(rig.service, inc.id)
    assert failed.value.terminal and rig.provider.launched == [new.id]


async def test_a_promotion_survives_a_reload_and_the_configs_own_change_of_known_good_wins(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    engine = rig.engine
    await rig.reload(config_with(rig, ["v1", "v2", "v3"], "v1"))
    await promote(rig, "v2", "v1")
    await rig.reload(config_with(rig, ["v1", "v2", "v3"], "v1"))  # a reload with the same known_good
    assert engine.fleet.known_good == {"demo-web": "v2"}
    launched = await engine.fleet.launch_replacement(engine.config.services["web"], None)
    assert (launched.attributes["image_version"], launched.origin) == ("v2", Origin.FILL)

    await rig.reload(config_with(rig, ["v1", "v2", "v3"], "v3"))  # the operator changed known_good
    assert engine.fleet.known_good == {"demo-web": "v3"}
    assert (await rig.store.images.get("demo-web")).known_good == "v3"  # type: ignore[union-attr]

    await promote(rig, "v2", "v3")
    await rig.reload(config_with(rig, ["v1", "v3"], "v3"))  # the promoted version is no longer configured
    assert engine.fleet.known_good == {"demo-web": "v3"}


async def test_launches_recorded_before_a_restart_are_started_again(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    fleet = rig.engine.fleet
    # left by a daemon that stopped between recording a launch and the provider's answer
    for mid, why in (("web-fill", "fill"), ("web-repl", "I-1"), ("web-old", "fill")):
        attrs = {"port": "20100", "image": "demo-web", "image_version": "v1", "launched_for": why}
        lifecycle = Lifecycle.TERMINATED if mid == "web-old" else Lifecycle.LAUNCHING
        await rig.monitor.put_machine(Machine("web", mid, "127.0.0.1:20100", lifecycle, attrs))

    rig.provider.launch_error = "quota exceeded"
    await fleet.resume_launches()  # a failure is left to the fill loop: the start goes on
    assert rig.lifecycle("web-fill") is Lifecycle.LAUNCHING

    rig.provider.launch_error = None
    await fleet.resume_launches()
    assert rig.provider.launched == ["web-fill"]  # an incident's replacement is its playbook's to resume
    assert rig.lifecycle("web-fill") is Lifecycle.PROBATION and rig.lifecycle("web-repl") is Lifecycle.LAUNCHING
    stored = await rig.store.machines.get("web", "web-fill")
    assert stored is not None and stored.lifecycle is Lifecycle.PROBATION
    await fleet.resume_launches()
    assert rig.provider.launched == ["web-fill"]  # started once


async def test_the_rotation_serves_the_machines_in_service_that_are_not_on_their_way_out(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(desired=6)
    await fleet_of(rig, "web-ok", "web-fixing", "web-escalated", "web-retiring", "web-recovered")
    await rig.add("web-new", Lifecycle.PROBATION)
    retiring = rig.monitor.machine("web", "web-retiring")
    assert retiring is not None
    await rig.monitor.put_machine(
        Machine("web", retiring.id, retiring.address, Lifecycle.IN_SERVICE, {**retiring.attributes, "retiring": "1"})
    )
    book = rig.engine.book
    for mid, state in (
        ("web-fixing", IncidentState.REMEDIATING),
        ("web-escalated", IncidentState.FAILED),
        ("web-recovered", IncidentState.REMEDIATED),
    ):
        inc = await book.open("web", mid, "replace-machine", f"{mid} is down", rig.t0)
        inc.state = state
        await book.save(inc)

    serving, leaving = rig.engine.fleet.rotation_split(rig.service)
    assert sorted(m.id for m in serving) == ["web-ok", "web-recovered"]
    assert sorted(m.id for m in leaving) == ["web-fixing", "web-retiring"]

    (rig.tmp_path / "rotation.json").write_text("[]")  # a rotation that lost everything, at start
    await rig.engine.fleet.sync_rotation(rig.service)
    assert rig.rotation() == {"web-ok", "web-recovered"}  # the leaving ones are left to what drains them
    assert rig.engine.fleet.rotation_faults == {} and rig.sample("healerd_rotation_up", service="web") == 1.0


async def test_only_a_machine_on_probation_enters_service(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    fleet = rig.engine.fleet
    await fleet_of(rig, "web-0", "web-1")
    await rig.add("web-new", Lifecycle.PROBATION)
    await rig.add("web-bad", Lifecycle.QUARANTINED)

    await fleet.put_in_service(rig.service, "web-new")
    await fleet.put_in_service(rig.service, "web-new")  # idempotent
    assert rig.lifecycle("web-new") is Lifecycle.IN_SERVICE
    assert rig.rotation() == {"web-0", "web-1", "web-new"}

    with pytest.raises(StepFailed, match="web-bad is quarantined; only a machine in probation") as refused:
        await fleet.put_in_service(rig.service, "web-bad")
    assert refused.value.terminal and "web-bad" not in rig.rotation()
    with pytest.raises(StepFailed, match="machine web-gone of web is not known"):
        await fleet.put_in_service(rig.service, "web-gone")


async def test_retiring_takes_the_machine_out_of_rotation_then_ends_it(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(desired=2)
    await fleet_of(rig, "web-0", "web-1", "web-2")
    victim = rig.monitor.machine("web", "web-2")
    assert victim is not None

    await rig.engine.fleet.retire(rig.service, victim, "3 in service for desired 2")

    assert rig.rotation() == {"web-0", "web-1"}
    assert rig.provider.retired == ["web-2"] and rig.lifecycle("web-2") is None  # no longer part of the fleet
    stored = await rig.store.machines.get("web", "web-2")
    assert stored is not None and stored.lifecycle is Lifecycle.TERMINATED
    assert "retiring" in stored.attributes and "retired_at" in stored.attributes
    (event,) = rig.of(EventType.MACHINE_RETIRED)
    assert event.summary == "web-2 retired (terminated): 3 in service for desired 2"
    assert event.details == {"outcome": "terminated", "reason": "3 in service for desired 2", "desired": 2}


async def test_quarantining_twice_isolates_once_and_keeps_the_first_evidence(rig_factory: Any) -> None:
    rig: Rig = await rig_factory()
    await fleet_of(rig, "web-0", "web-1", "web-2")
    inc = await rig.engine.book.open("web", "web-0", "replace-machine", "web-0 is down", rig.t0)

    first = await rig.engine.quarantines.quarantine(rig.service, "web-0", inc.id, True)
    second = await rig.engine.quarantines.quarantine(rig.service, "web-0", inc.id, True)  # a retried step

    assert first == second == {"frozen": True}
    assert rig.provider.quarantined == ["web-0"]
    assert rig.lifecycle("web-0") is Lifecycle.QUARANTINED and rig.rotation() == {"web-1", "web-2"}
    m = rig.monitor.machine("web", "web-0")
    assert m is not None and m.attributes["incident"] == inc.id
    assert json.loads(m.attributes["evidence"]) == {"frozen": True}
    (event,) = rig.of(EventType.MACHINE_QUARANTINED)
    assert event.incident == inc.id and event.details["evidence"] == {"frozen": True}
    assert rig.sample("healerd_quarantined_machines", service="web") == 1.0


def test_scale_in_retires_off_version_machines_then_the_newest() -> None:
    def m(mid: str, version: str, at: float) -> Machine:
        return Machine(
            "web", mid, "127.0.0.1:1", Lifecycle.IN_SERVICE, {"image_version": version, "launched_at": str(at)}
        )

    fleet = [m("old-v2", "v2", 10), m("new-v2", "v2", 30), m("old-v1", "v1", 5), m("mid-v2", "v2", 20)]
    assert [x.id for x in retirement_order(fleet, "v2")] == ["old-v1", "new-v2", "mid-v2", "old-v2"]
    assert [x.id for x in retirement_order(fleet, None)] == ["new-v2", "mid-v2", "old-v2", "old-v1"]


def test_the_rotation_serves_no_machine_healerd_took_out_for_an_incident() -> None:
    from healerd.remediation.fleet import rotation_split
    from healerd.remediation.incidents import Incident

    def machine(mid: str, **attrs: str) -> Machine:
        return Machine("web", mid, f"127.0.0.1:{8000 + len(mid)}", Lifecycle.IN_SERVICE, dict(attrs))

    def incident(mid: str, state: IncidentState, **details: Any) -> Incident:
        return Incident(f"I-{mid}", "web", mid, state, "restart-machine", 0.0, 0.0, "down", details=details)

    machines = [machine("a"), machine("b"), machine("c"), machine("d"), machine("e", retiring="1"), machine("f")]
    incidents = [
        incident("b", IncidentState.REMEDIATING, out_of_rotation=True),  # a rung at work: leaving (drained)
        incident("c", IncidentState.OPEN, out_of_rotation=True, rung=1),  # waits for its next rung: kept out
        incident("d", IncidentState.FAILED, out_of_rotation=True),  # a human is needed: kept out
        incident("f", IncidentState.OPEN),  # held by a gate before anything was done: still served
    ]
    serving, leaving = rotation_split(machines, incidents)
    assert [m.id for m in serving] == ["a", "f"]
    assert [m.id for m in leaving] == ["b", "e"]
