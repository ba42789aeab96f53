"""The zone guard on a test bench (tests/remediation_rig.py), with an explicit `now`: a lost zone's machines
become unreachable and its share is launched in the surviving zones (within max_surge), every zone failing
at once holds everything back until all are healthy again, and the healerd_zone_lost series go with the
node's leadership."""

from __future__ import annotations

from typing import Any

from remediation_rig import Rig

from healerd.events import EventType
from healerd.machines import Lifecycle
from healerd.remediation.reconcilers import FillReconciler, IncidentReconciler
from healerd.remediation.safety import Reason
from healerd.remediation.zone_guard import ZoneReconciler

ZONES = ("a", "b", "c")


async def zoned_fleet(rig: Rig) -> dict[str, list[str]]:
    """Six machines, two per zone, up; the provider launches into the zone it is asked for."""
    ports = iter(range(31000, 31100))
    rig.provider.zones = lambda service: ZONES  # type: ignore[method-assign]
    rig.provider.allocate = lambda taken, zone="": (f"127.0.0.1:{(p := next(ports))}", {"port": str(p), "zone": zone})  # type: ignore[method-assign]
    out: dict[str, list[str]] = {}
    for zone in ZONES:
        for i in range(2):
            mid = f"web-{zone}{i}"
            await rig.add(mid, zone=zone, launched_at=str(rig.t0 - 100))
            out.setdefault(zone, []).append(mid)
    rig.up(*(m for ms in out.values() for m in ms))
    return out


async def a_pass(rig: Rig, now: float) -> None:
    """What one turn of the engine's loop does, in its order."""
    for cls in (ZoneReconciler, IncidentReconciler, FillReconciler):
        await rig.reconciler(cls).reconcile(rig.service, now)


async def test_a_lost_zone_is_unreachable_and_its_share_is_launched_in_the_others(rig_factory: Any) -> None:
    rig = await rig_factory(desired=6, remediation="{max_unhealthy: 1}")
    fleet = await zoned_fleet(rig)
    rig.down(*fleet["a"])
    await a_pass(rig, rig.t0 + 1)

    assert {rig.lifecycle(m) for m in fleet["a"]} == {Lifecycle.UNREACHABLE}
    assert not set(fleet["a"]) & rig.rotation()
    (lost,) = rig.of(EventType.ZONE_LOST)
    assert lost.details["zone"] == "a" and lost.details["surviving"] == ["b", "c"] and lost.details["launch"] == 2
    assert rig.sample("healerd_zone_lost", service="web", zone="a") == 1
    launched = [rig.monitor.machines["web"][m] for m in rig.provider.launched]
    assert sorted(m.zone for m in launched) == ["b", "c"], "the lost share goes to the surviving zones, spread"
    assert not rig.provider.quarantined
    assert not [e for e in rig.of(EventType.REMEDIATION_SUPPRESSED) if e.details["reason"] == "max_unhealthy"]

    rig.reconciler(ZoneReconciler).stop()  # another node leads now: no stale series left here
    assert rig.sample("healerd_zone_lost", service="web", zone="a") is None


async def test_max_surge_caps_what_is_launched_for_a_lost_zone(rig_factory: Any) -> None:
    rig = await rig_factory(desired=6, remediation="{max_unhealthy: 1, zone_loss: {max_surge: 1}}")
    fleet = await zoned_fleet(rig)
    rig.down(*fleet["a"])
    for tick in range(3):
        await a_pass(rig, rig.t0 + 1 + tick)
    assert len(rig.provider.launched) == 1


async def test_after_every_zone_failed_no_zone_is_lost_until_all_are_healthy_again(rig_factory: Any) -> None:
    rig = await rig_factory(desired=6, remediation="{max_unhealthy: 1}")
    fleet = await zoned_fleet(rig)
    everything = [m for ms in fleet.values() for m in ms]
    rig.down(*everything)
    await a_pass(rig, rig.t0 + 1)
    held = {e.details["reason"] for e in rig.of(EventType.REMEDIATION_SUPPRESSED)}
    assert held == {Reason.MONITOR_SUSPECT.value}

    rig.up(*fleet["a"])  # the monitor's network comes back zone by zone
    await a_pass(rig, rig.t0 + 2)
    assert not rig.of(EventType.ZONE_LOST), "zones b and c, still recovering, were taken for lost"
    assert not rig.provider.launched
    assert {rig.lifecycle(m) for m in everything} == {Lifecycle.IN_SERVICE}

    rig.up(*fleet["b"], *fleet["c"])
    await a_pass(rig, rig.t0 + 3)
    rig.down(*fleet["b"])  # all were healthy again: now a zone failing alone is lost
    await a_pass(rig, rig.t0 + 4)
    assert [e.details["zone"] for e in rig.of(EventType.ZONE_LOST)] == ["b"]
