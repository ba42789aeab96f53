"""The escalation ladder: which rung a remediation starts at, what a rung's end means, and what follows it.

A service's rungs are playbooks tried in order while the machine stays sick (repair before replace). A rung
that mends the machine and keeps it resolves the incident ("healed by restart-machine"); one that replaces it
ends as before; one that fails or times out hands on to the next, which passes the safety gates (and, in a
cluster, confirmation) again. A machine repaired `max_repairs.count` times within `max_repairs.per` starts at
the last rung. The decisions are pure functions; `Ladder` records what they decide.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from ..events import EventType, Severity
from ..health import Condition
from ..providers.base import ProviderError
from .actions import StepFailed
from .incidents import Incident, IncidentBook, IncidentState

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..config.ladder import MaxRepairs
    from ..metrics import Metrics
    from ..store import BaseStore
    from .fleet import Fleet
    from .repair import Repair

log = structlog.get_logger("healerd.remediation")

#: a rung's steps are journaled at rung * RUNG_STEPS + step: each rung keeps its own journal
RUNG_STEPS = 100


class RungOutcome(enum.StrEnum):
    HEALED = "healed"  # the machine is healthy again and kept
    REPLACED = "replaced"  # a replacement took its place
    DONE = "done"  # its steps all ran, the machine is still down, and no rung is left: the service's state decides
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"  # not tried: the machine was repaired too often (max_repairs)


@dataclass(frozen=True)
class RungResult:
    ok: bool
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    terminal: bool = False
    timed_out: bool = False


def first_rung(rungs: int, repairs: int, max_repairs: MaxRepairs | None) -> int:
    """Where a new remediation starts: the first rung, or the last once the machine was repaired
    `max_repairs.count` times within `max_repairs.per` (`repairs` counts them)."""
    if max_repairs is not None and rungs > 1 and repairs >= max_repairs.count:
        return rungs - 1
    return 0


def rung_outcome(result: RungResult, machine_up: bool, last: bool) -> RungOutcome:
    """What a rung's end means: it replaced (or quarantined) the machine, mended it (its checks pass again,
    `machine_up`), or did not. A rung whose steps all ran but left the machine down did not mend it: the next
    rung is tried; on the last one the playbook has done what it could (the service's state ends the incident)."""
    if not result.ok:
        return RungOutcome.TIMED_OUT if result.timed_out else RungOutcome.FAILED
    if result.outputs.get("replacement") or "quarantine" in result.outputs:
        return RungOutcome.REPLACED
    if machine_up:
        return RungOutcome.HEALED
    return RungOutcome.DONE if last else RungOutcome.FAILED


def next_rung(rung: int, rungs: int, outcome: RungOutcome) -> int | None:
    """The rung to try after this one, or None: the ladder ended (mended, or nothing left to try)."""
    if outcome in (RungOutcome.HEALED, RungOutcome.REPLACED, RungOutcome.DONE):
        return None
    return rung + 1 if rung + 1 < rungs else None


class Ladder:
    """What the runbook records at each rung: where it starts, the machine out of rotation while it is worked
    on, a rung that healed it, a rung that hands on to the next."""

    def __init__(
        self, incidents: IncidentBook, repair: Repair, *, fleet: Fleet, store: BaseStore, metrics: Metrics
    ) -> None:
        self.incidents = incidents
        self.repair = repair
        self.fleet = fleet
        self.store = store
        self.metrics = metrics

    def machine_up(self, svc: ServiceConfig, machine_id: str) -> bool:
        """Its checks pass again (up, or impaired: it serves)."""
        mh = self.repair.monitor.book.machine(svc.name, machine_id)
        return mh is not None and mh.condition in (Condition.UP, Condition.IMPAIRED)

    def count(self, svc: ServiceConfig, playbook: str, outcome: RungOutcome) -> None:
        self.metrics.counter("remediation_rungs").labels(svc.name, playbook, outcome.value).inc()

    async def start(self, svc: ServiceConfig, inc: Incident) -> None:
        """A new remediation: where on the ladder it starts (kept in the incident: a resume goes on from it)."""
        if "rung" in inc.details:
            return
        rungs, limit = svc.rungs, svc.remediation.max_repairs
        repairs = 0
        if limit is not None:
            repairs = await self.store.incidents.repairs_since(svc.name, inc.machine, time.time() - limit.per)
        start = first_rung(len(rungs), repairs, limit)
        for skipped in rungs[:start]:
            self.count(svc, skipped.playbook, RungOutcome.SKIPPED)
        if start:
            assert limit is not None
            inc.details["rungs_skipped"] = (
                f"{inc.machine} was repaired {repairs} times within {limit.per:g}s (max_repairs): "
                f"straight to {rungs[start].playbook}"
            )
            log.warning("machine repaired too often; the ladder starts at its last rung", repairs=repairs)
        self.at(inc, svc, start)

    def at(self, inc: Incident, svc: ServiceConfig, rung: int) -> None:
        inc.details["rung"] = rung
        inc.playbook = svc.rungs[rung].playbook if svc.rungs else ""
        inc.details.pop("rung_started_at", None)

    async def out_of_rotation(self, svc: ServiceConfig, inc: Incident) -> None:
        """Whatever the rung, a machine confirmed down takes no traffic while it is worked on: removed at the
        start of every rung (idempotent; whatever put it back meanwhile is undone)."""
        await self.fleet.rotation_remove(svc, inc.machine)
        if not inc.details.get("out_of_rotation"):
            inc.details["out_of_rotation"] = True
            await self.incidents.save(inc)

    async def back_in_rotation(self, svc: ServiceConfig, inc: Incident) -> None:
        """The mended machine takes traffic again; the flag goes only once the rotation took it (a failure is
        tried again by the incident reconciler)."""
        if inc.details.get("out_of_rotation"):
            await self.repair.return_to_rotation(svc, inc.machine)
            inc.details.pop("out_of_rotation", None)
            log.info("machine back in rotation")

    async def healed(self, svc: ServiceConfig, inc: Incident, started: float) -> None:
        playbook = inc.playbook
        inc.details["healed_by"] = playbook
        inc.state = IncidentState.REMEDIATED  # saved first: whatever fails next, the incident is not left running
        inc.details["finished_at"] = time.time()
        await self.incidents.save(inc)
        try:
            await self.back_in_rotation(svc, inc)
        except (ProviderError, RuntimeError, OSError, StepFailed) as exc:
            log.error("machine healed but not back in rotation yet; tried again", error=str(exc)[:300])
            await self.store.incidents.log_repair(svc.name, inc.machine, time.time(), inc.id)
            return  # the incident reconciler returns it (and resolves the incident) once the rotation takes it
        await self.store.incidents.log_repair(svc.name, inc.machine, time.time(), inc.id)
        duration = time.time() - started
        self.metrics.counter("remediations").labels(svc.name, playbook, "succeeded").inc()
        self.incidents.emit(
            EventType.REMEDIATION_SUCCEEDED,
            inc,
            f"{inc.machine} healed by {playbook} in {duration:.0f}s (kept, back in rotation)",
            healed_by=playbook,
            duration=round(duration, 3),
        )
        log.info("machine healed; kept", healed_by=playbook, seconds=round(duration, 1))
        await self.incidents.resolve(inc, f"healed by {playbook}")

    async def escalate(self, svc: ServiceConfig, inc: Incident, rung: int, outcome: RungOutcome, error: str) -> None:
        """The rung did not mend the machine: the next one is tried once the safety gates let it."""
        tried = inc.playbook
        self.at(inc, svc, rung)
        inc.state = IncidentState.OPEN
        inc.details.setdefault("rungs", []).append({"playbook": tried, "outcome": outcome.value, "error": error[:500]})
        await self.incidents.save(inc)
        self.incidents.emit(
            EventType.REMEDIATION_ESCALATED,
            inc,
            f"{tried} did not mend {inc.machine} ({outcome.value}: {error[:200]}); next: {inc.playbook}",
            Severity.WARNING,
            tried=tried,
            outcome=outcome.value,
            error=error[:500],
            next=inc.playbook,
        )
        log.warning("rung did not mend the machine; escalating", tried=tried, next=inc.playbook, error=error[:300])

    async def nothing_to_try(self, svc: ServiceConfig, inc: Incident) -> None:
        """A machine healerd can neither repair nor replace: out of rotation, and a human acts."""
        await self.out_of_rotation(svc, inc)
        why = (
            f"{inc.machine} is out of rotation and healerd cannot mend it (service {svc.name} has no image to "
            "replace it from and no remediation.ladder to repair it): a human must act; it returns to rotation "
            "once its checks pass"
        )
        inc.state, inc.error = IncidentState.FAILED, why
        await self.incidents.save(inc)
        self.incidents.emit(EventType.REMEDIATION_FAILED, inc, why, Severity.CRITICAL, error=why)
        log.error("machine out of rotation; a human must act", why=why)

    async def remediated(self, inc: Incident, started: float) -> None:
        """The rung replaced the machine (or did all it could): the service's state ends the incident."""
        inc.state = IncidentState.REMEDIATED
        inc.details["finished_at"] = time.time()
        await self.incidents.save(inc)
        duration = time.time() - started
        self.metrics.counter("remediations").labels(inc.service, inc.playbook, "succeeded").inc()
        self.metrics.histogram("remediation_duration_seconds").labels(inc.service, inc.playbook).observe(duration)
        self.incidents.emit(
            EventType.REMEDIATION_SUCCEEDED,
            inc,
            f"{inc.machine} remediated in {duration:.0f}s"
            + (f": replaced by {inc.replacement}" if inc.replacement else ""),
            replacement=inc.replacement,
            duration=round(duration, 3),
        )
        log.info("remediation succeeded", replacement=inc.replacement, seconds=round(duration, 1))

    async def failed(self, inc: Incident, error: str) -> None:
        """No rung mended it: a human is needed (and the failure counts toward the machine's retry limit)."""
        inc.state = IncidentState.FAILED
        inc.error = error
        await self.incidents.save(inc)
        await self.store.incidents.log_failure(inc.service, inc.machine, time.time(), inc.id)
        self.metrics.counter("remediations").labels(inc.service, inc.playbook, "failed").inc()
        self.incidents.emit(
            EventType.REMEDIATION_FAILED,
            inc,
            f"remediation of {inc.machine} failed, a human is needed: {error}",
            Severity.CRITICAL,
            error=error,
        )
        log.error("remediation failed; escalating", error=error)
