"""What healerd knows of each service's zones now (the zone reconciler's last pass): the verdict, why a zone's
machines wait, the lost zones' machines, and where no machine may be launched."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ..health import Condition
from ..machines import Lifecycle, Machine
from ..zones import NO_ZONES, ZoneCount, ZoneVerdict
from .safety import is_troubled

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..monitor import Monitor


class ZoneGuard:
    """What healerd knows of each service's zones now: the last verdict, and why a zone's machines wait."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.verdicts: dict[str, ZoneVerdict] = {}
        self.counts: dict[str, dict[str, ZoneCount]] = {}
        #: service -> zone -> why its machines' remediation waits (a zone failing, a loss not confirmed)
        self.waiting: dict[str, dict[str, str]] = {}
        #: service -> when every one of its zones was last seen unhealthy at once (the monitor is suspect)
        self.suspect_since: dict[str, float] = {}

    def verdict(self, service: str) -> ZoneVerdict:
        return self.verdicts.get(service, NO_ZONES)

    def count(self, service: str) -> dict[str, ZoneCount]:
        """The service's machines in service per zone (those of no zone aside): how many, down, failing."""
        book = self.monitor.book
        totals: Counter[str] = Counter()
        down: Counter[str] = Counter()
        troubled: Counter[str] = Counter()
        for m in self.monitor.machines.get(service, {}).values():
            if m.lifecycle is not Lifecycle.IN_SERVICE or not m.zone or m.retiring:
                continue
            totals[m.zone] += 1
            mh = book.machine(service, m.id)
            if mh is not None:
                down[m.zone] += mh.condition is Condition.DOWN
                troubled[m.zone] += is_troubled(mh)
        return {z: ZoneCount(n, down[z], troubled[z]) for z, n in totals.items()}

    def unreachable(self, service: str) -> dict[str, list[Machine]]:
        """The machines of the service's lost zones, by zone."""
        out: dict[str, list[Machine]] = {}
        for m in self.monitor.machines.get(service, {}).values():
            if m.lifecycle is Lifecycle.UNREACHABLE:
                out.setdefault(m.zone, []).append(m)
        return out

    def avoid(self, service: str) -> frozenset[str]:
        """Zones where no machine is launched now: lost ones, and those unhealthy."""
        return frozenset(self.unreachable(service)) | self.verdict(service).unhealthy

    def suspect(self, service: str) -> str:
        """The zones' figures when every zone of the service is unhealthy at once, or was and not all of them
        are healthy again ('' otherwise)."""
        verdict = self.verdict(service)
        if not verdict.suspect:
            return ""
        detail = verdict.detail(self.counts.get(service, {}))
        if verdict.unhealthy != frozenset(verdict.states):
            detail += "; they were all at once: no zone is judged lost until every zone is healthy again"
        return detail

    def held(self, service: str, zone: str) -> str:
        """Why a machine of `zone` waits for its zone to be judged ('' when it does not)."""
        return self.waiting.get(service, {}).get(zone, "") if zone else ""

    def in_unhealthy_zone(self, service: str, machine: Machine) -> bool:
        """True when the machine's failure is its zone's (counted by the zone guard, not as a storm)."""
        verdict = self.verdict(service)
        return not verdict.suspect and machine.zone in verdict.unhealthy

    def short(self, svc: ServiceConfig) -> int:
        """Machines of lost zones that are not launched again elsewhere (beyond `zone_loss.max_surge`)."""
        lost = sum(len(ms) for ms in self.unreachable(svc.name).values())
        return lost - svc.remediation.zone_loss.surge(lost, svc.desired) if lost else 0
