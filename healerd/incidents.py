"""Incidents: what one is, its states, and the book of the active ones (kept in the store, announced on
the bus). An incident opens when a machine goes hard down and lasts until its service is optimal again."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from .events import Event, EventType, Severity, new_id
from .store.interface import IncidentRecord

if TYPE_CHECKING:
    from .events import EventBus
    from .store import BaseStore

log = structlog.get_logger("healerd.remediation")


class IncidentState(enum.StrEnum):
    OPEN = "open"  # remediation not started (held back by a gate, or observing)
    REMEDIATING = "remediating"
    REMEDIATED = "remediated"  # the playbook succeeded; resolved once the service is optimal
    FAILED = "failed"  # escalated to a human; no automatic retry
    RESOLVED = "resolved"


ACTIVE = (IncidentState.OPEN, IncidentState.REMEDIATING, IncidentState.REMEDIATED, IncidentState.FAILED)


@dataclass
class Incident:
    id: str
    service: str
    machine: str
    state: IncidentState
    playbook: str
    opened_at: float
    updated_at: float
    summary: str
    resolved_at: float | None = None
    replacement: str | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "machine": self.machine,
            "state": self.state.value,
            "playbook": self.playbook,
            "opened_at": self.opened_at,
            "updated_at": self.updated_at,
            "resolved_at": self.resolved_at,
            "summary": self.summary,
            "replacement": self.replacement,
            "error": self.error,
            "details": self.details,
        }

    @classmethod
    def from_record(cls, r: IncidentRecord) -> Incident:
        return cls(
            id=r.id,
            service=r.service,
            machine=r.machine,
            state=IncidentState(r.state),
            playbook=r.playbook,
            opened_at=r.opened_at,
            updated_at=r.updated_at,
            resolved_at=r.resolved_at,
            summary=r.summary,
            replacement=r.replacement,
            error=r.error,
            details=dict(r.details),
        )

    def record(self) -> IncidentRecord:
        return IncidentRecord(
            self.id,
            self.service,
            self.machine,
            self.state.value,
            self.playbook,
            self.opened_at,
            self.updated_at,
            self.resolved_at,
            self.summary,
            self.replacement,
            self.error,
            self.details,
        )


class IncidentBook:
    """The active (not resolved) incidents, by id; every change is saved before it is announced."""

    def __init__(self, store: BaseStore, bus: EventBus, on_change: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.bus = bus
        self.on_change = on_change  # an incident opened or resolved (gauges follow)
        self.active: dict[str, Incident] = {}

    def of(self, service: str) -> list[Incident]:
        """The service's active incidents, oldest first."""
        return sorted((i for i in self.active.values() if i.service == service), key=lambda i: i.opened_at)

    def machines_remediating(self, service: str) -> set[str]:
        """The service's machines whose incident is being remediated (a playbook is taking them out)."""
        return {i.machine for i in self.of(service) if i.state is IncidentState.REMEDIATING}

    def machines(self, service: str) -> set[str]:
        return {i.machine for i in self.active.values() if i.service == service}

    def remediating(self, service: str) -> int:
        return sum(1 for i in self.active.values() if i.service == service and i.state is IncidentState.REMEDIATING)

    async def load(self) -> None:
        """The unresolved incidents of the store (again, when this node takes over the cluster's lead)."""
        self.active = {}
        for r in await self.store.incidents.unresolved():
            inc = Incident.from_record(r)
            self.active[inc.id] = inc

    async def open(self, service: str, machine: str, playbook: str, summary: str, now: float) -> Incident:
        inc = Incident(new_id(now), service, machine, IncidentState.OPEN, playbook, now, now, summary[:1000])
        await self.save(inc)
        self.active[inc.id] = inc
        self.emit(
            EventType.INCIDENT_OPENED, inc, f"incident {inc.id} opened: {inc.summary}", Severity.CRITICAL, now=now
        )
        self.on_change()
        return inc

    async def save(self, inc: Incident) -> None:
        inc.updated_at = time.time()
        await self.store.incidents.save(inc.record())

    def emit(
        self,
        type_: EventType,
        inc: Incident,
        summary: str,
        severity: Severity = Severity.INFO,
        firing: bool = True,
        machine: str | None = None,
        **details: Any,
    ) -> None:
        self.bus.publish(
            Event(
                type_,
                inc.service,
                summary,
                time.time(),  # events are stamped when they are published: their order is the order of the world
                machine=machine or inc.machine,
                incident=inc.id,
                severity=severity,
                firing=firing,
                details=details,
            )
        )

    async def resolve(self, inc: Incident, why: str) -> None:
        # The wall clock, not the reconcile's `now`: a remediation whose last step ended during this pass
        # must not end after the incident it belongs to.
        inc.state = IncidentState.RESOLVED
        inc.resolved_at = time.time()
        await self.save(inc)
        self.active.pop(inc.id, None)
        self.emit(EventType.INCIDENT_RESOLVED, inc, f"incident {inc.id} resolved: {why}", firing=False)
        log.info("incident resolved", why=why)
        self.on_change()
