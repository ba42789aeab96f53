"""The zone guard: each service's zones judged at every pass (`healerd.zones`). A lost zone's machines are
marked unreachable and taken out of rotation (the fill launches their share in the surviving zones); every
zone failing at once holds all remediation back (`monitor_suspect`); a lost zone's machines that answer
again are retired or quarantined, never put back in rotation unexamined."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING

import structlog
from structlog.contextvars import bound_contextvars

from ..config.zones import OnReturn
from ..events import Event, EventType, Severity
from ..health import Condition
from ..leadership import STANDALONE, Leadership
from ..machines import Lifecycle, Machine
from ..providers.base import ProviderError
from ..zones import ZoneVerdict, judge, needed
from .zone_state import ZoneGuard

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..events import EventBus
    from ..metrics import Metrics
    from .controls import Controls
    from .fleet import Fleet
    from .quarantine import Quarantine

log = structlog.get_logger("healerd.remediation")

#: the `incident` attribute of a machine quarantined when its lost zone returned
ZONE_RETURN = "zone_return"
#: the lifecycles a lost zone takes from healerd: everything that was, or was about to be, serving
_TAKEN = (Lifecycle.IN_SERVICE, Lifecycle.PROBATION, Lifecycle.LAUNCHING)
#: how long taking a lost machine out of rotation may take (its load balancer may be in the lost zone too)
ROTATION_TIMEOUT = 5.0


class ZoneReconciler:
    """Judges a service's zones, declares a zone lost (confirmed by the nodes outside it, in a cluster), and
    handles a lost zone's machines when they answer again."""

    def __init__(
        self,
        guard: ZoneGuard,
        fleet: Fleet,
        *,
        controls: Controls,
        quarantines: Quarantine,
        bus: EventBus,
        metrics: Metrics,
        leadership: Leadership = STANDALONE,
    ) -> None:
        self.guard = guard
        self.monitor = guard.monitor
        self.fleet = fleet
        self.controls = controls
        self.quarantines = quarantines
        self.bus = bus
        self.metrics = metrics
        self.leadership = leadership
        self._ask_again: dict[tuple[str, str], tuple[float, str]] = {}  # (service, zone) -> (when, why not yet)
        self._series: set[tuple[str, str]] = set()  # the healerd_zone_lost series this node exports

    async def reconcile(self, service: ServiceConfig, now: float) -> float:
        with bound_contextvars(service=service.name):
            counts = self.guard.count(service.name)
            fraction = service.remediation.zone_loss.fraction
            verdict = self._after_suspicion(service, judge(counts, fraction), now)
            self.guard.counts[service.name], self.guard.verdicts[service.name] = counts, verdict
            waiting: dict[str, str] = {}
            next_at = float("inf")
            for zone in verdict.failing:
                waiting[zone] = (
                    f"most of zone {zone} fails at once ({verdict.detail(counts)}); waiting one check for its "
                    "machines to settle, to tell a lost zone from failing machines"
                )
            if service.managed:
                for zone in verdict.lost:
                    why = await self._confirmed(service, zone, needed(counts[zone].machines, fraction), now)
                    if why:
                        waiting[zone] = why
                        next_at = min(next_at, self._ask_again[(service.name, zone)][0])
                    else:
                        await self._lose(service, zone, verdict, now)
                await self._returning(service)
            self.guard.waiting[service.name] = waiting
            self._gauges(service)
            return next_at

    def _after_suspicion(self, svc: ServiceConfig, verdict: ZoneVerdict, now: float) -> ZoneVerdict:
        """Once every zone failed at once, the monitor stays suspect until every zone is healthy again (or
        storm_cooldown ends): zones recovering one by one from a monitoring fault must not look like the last
        ones to recover being lost."""
        since = self.guard.suspect_since.get(svc.name)
        if verdict.suspect:
            self.guard.suspect_since.setdefault(svc.name, now)
            return verdict
        if since is None:
            return verdict
        if not verdict.unhealthy or now >= since + svc.remediation.storm_cooldown:
            del self.guard.suspect_since[svc.name]
            return verdict
        return dataclasses.replace(verdict, suspect=True, lost=(), failing=())

    def _of(self, svc: ServiceConfig, zone: str) -> list[Machine]:
        return [m for m in self.monitor.machines.get(svc.name, {}).values() if m.zone == zone]

    async def _confirmed(self, svc: ServiceConfig, zone: str, down: int, now: float) -> str:
        """'' when the zone's loss is confirmed (alone: it is), else why not, asked again after a check interval."""
        key = (svc.name, zone)
        again = self._ask_again.get(key)
        if again is not None and now < again[0]:
            return again[1]
        ids = [m.id for m in self._of(svc, zone) if m.lifecycle is Lifecycle.IN_SERVICE]
        timeout = max((c.timeout for c in svc.checks), default=5.0) + 2.0
        word = await self.leadership.confirm_zone(svc.name, zone, ids, down, timeout)
        if word is None or word.confirmed:
            self._ask_again.pop(key, None)
            return ""
        why = f"zone {zone} looks lost from here, not from the nodes outside it: {word.detail}"
        self._ask_again[key] = (now + max(5.0, min((c.interval for c in svc.checks), default=5.0)), why)
        log.warning("zone loss not confirmed", zone=zone, detail=word.detail)
        return why

    async def _lose(self, svc: ServiceConfig, zone: str, verdict: ZoneVerdict, now: float) -> None:
        machines = [m for m in self._of(svc, zone) if m.lifecycle in _TAKEN]
        for m in machines:
            attrs = {**m.attributes, "unreachable_since": str(now), "was": m.lifecycle.value}
            await self.monitor.put_machine(Machine(m.service, m.id, m.address, Lifecycle.UNREACHABLE, attrs), now)
        for m in machines:  # after all are marked: a load balancer that hangs holds up nothing else
            try:
                async with asyncio.timeout(ROTATION_TIMEOUT):
                    await self.fleet.rotations[svc.name].remove(m)
            except (ProviderError, TimeoutError) as exc:
                log.warning("a lost zone's machine could not be taken out of rotation", machine=m.id, error=str(exc))
        await self.controls.clear_storm(svc.name, now)  # the storm was the zone: its share is launched now
        lost = sum(len(ms) for ms in self.guard.unreachable(svc.name).values())
        surge = svc.remediation.zone_loss.surge(lost, svc.desired)
        surviving = sorted(z for z, s in verdict.states.items() if z not in verdict.unhealthy)
        counts = self.guard.counts.get(svc.name, {})
        text = (
            f"zone {zone} of {svc.name} is lost ({verdict.detail(counts)}) while {', '.join(surviving)} "
            f"{'is' if len(surviving) == 1 else 'are'} healthy: {len(machines)} machine(s) marked unreachable and "
            f"out of rotation; {surge} launched in {', '.join(surviving)}"
        )
        log.error("zone lost", zone=zone, machines=[m.id for m in machines], surge=surge)
        self.bus.publish(
            Event(
                EventType.ZONE_LOST,
                svc.name,
                text,
                time.time(),
                severity=Severity.CRITICAL,
                details={
                    "zone": zone,
                    "machines": [m.id for m in machines],
                    "surviving": surviving,
                    "launch": surge,
                    "figures": verdict.detail(counts),
                },
            )
        )

    async def _returning(self, svc: ServiceConfig) -> None:
        """A lost zone's machines that pass their checks again are retired or quarantined (zone_loss.on_return)."""
        on_return = svc.remediation.zone_loss.on_return
        for zone, machines in self.guard.unreachable(svc.name).items():
            book = self.monitor.book
            back = [m for m in machines if (mh := book.machine(m.service, m.id)) and mh.condition is Condition.UP]
            for m in back:
                with bound_contextvars(machine=m.id):
                    try:
                        if on_return is OnReturn.QUARANTINE:
                            await self.quarantines.quarantine(svc, m.id, ZONE_RETURN, False)
                        else:
                            await self.fleet.retire(svc, m, f"its zone {zone} returned; its share serves elsewhere")
                    except ProviderError as exc:
                        log.error("a returning machine could not be handled; tried again", error=str(exc))
                        continue
                    log.warning("a lost zone's machine answers again", zone=zone, outcome=on_return.value)
            if back and not self.guard.unreachable(svc.name).get(zone):
                self.bus.publish(
                    Event(
                        EventType.ZONE_RETURNED,
                        svc.name,
                        f"zone {zone} of {svc.name} answers again: its machines are "
                        f"{'quarantined' if on_return is OnReturn.QUARANTINE else 'retired'}, not put back in "
                        "rotation; the spread is rebalanced",
                        time.time(),
                        severity=Severity.INFO,
                        firing=False,
                        details={"zone": zone, "machines": [m.id for m in machines], "on_return": on_return.value},
                    )
                )

    def _gauges(self, svc: ServiceConfig) -> None:
        gauge = self.metrics.gauge("zone_lost")
        lost = self.guard.unreachable(svc.name)
        zones = set(self.fleet.provider(svc).zones(svc)) | set(self.guard.counts.get(svc.name, {})) | set(lost)
        for zone in sorted(zones - {""}):
            gauge.labels(svc.name, zone).set(1 if zone in lost else 0)
            self._series.add((svc.name, zone))

    def stop(self) -> None:
        """This node stops judging zones (another leads): its healerd_zone_lost series go, none stays stale."""
        gauge = self.metrics.gauge("zone_lost")
        for labels in self._series:
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
        self._series.clear()
