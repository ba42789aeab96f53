"""Incidents: what one is, its states, and the book of the active ones (kept in the store, announced on
the bus). An incident opens when a machine goes hard down and lasts until its service is optimal again."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from ..events import Event, EventType, Severity, new_id
from ..store.interface import IncidentRecord
from .safety import Reason, what_to_do

if TYPE_CHECKING:
    from ..events import EventBus
    from ..store import BaseStore

log = structlog.get_logger("healerd.remediation")


class IncidentState(enum.StrEnum):
    OPEN = "open"  # remediation not started (held back by a gate, or observing)
    REMEDIATING = "remediating"
    REMEDIATED = "remediated"  # the playbook succeeded; resolved once the service is optimal
    FAILED = "failed"  # escalated to a human; no automatic retry
    RESOLVED = "resolved"


#: the holds that are safety gates (not "static": a service healerd only alerts on)
HELD_REASONS = frozenset(r.value for r in Reason)

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
    acked_at: float | None = None
    acked_by: str = ""
    ack_comment: str = ""

    @property
    def acknowledged(self) -> dict[str, Any] | None:
        """Who acknowledged it, when, and what they said (None while nobody has)."""
        if self.acked_at is None:
            return None
        return {"by": self.acked_by, "at": self.acked_at, "comment": self.ack_comment}

    @property
    def held(self) -> dict[str, Any] | None:
        """Why healerd is not remediating it now (None when it is, or when it is past that point)."""
        reason = self.details.get("suppressed")
        if self.state is not IncidentState.OPEN or not reason or reason not in HELD_REASONS:
            return None
        return {
            "reason": reason,
            "detail": self.details.get("suppressed_detail", ""),
            "since": self.details.get("held_since"),
            "what_to_do": what_to_do(reason, self.service),
        }

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
            "held": self.held,
            "acknowledged": self.acknowledged,
            "ladder": self.ladder,
        }

    @property
    def ladder(self) -> dict[str, Any] | None:
        """Its way up the escalation ladder: the rung it is on, the rungs tried before and how each ended, and the
        one that healed it (None before a remediation started)."""
        if "rung" not in self.details:
            return None
        return {
            "rung": int(self.details["rung"]) + 1,
            "playbook": self.playbook,
            "tried": list(self.details.get("rungs", [])),
            "healed_by": self.details.get("healed_by"),
            "skipped": self.details.get("rungs_skipped"),
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
            acked_at=r.acked_at,
            acked_by=r.acked_by,
            ack_comment=r.ack_comment,
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
            self.acked_at,
            self.acked_by,
            self.ack_comment,
        )


class IncidentBook:
    """The active (not resolved) incidents, by id; every change is saved before it is announced."""

    def __init__(self, store: BaseStore, bus: EventBus, *, on_change: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.bus = bus
        self.on_change = on_change  # an incident opened or resolved (gauges follow)
        self.active: dict[str, Incident] = {}

    def of(self, service: str) -> list[Incident]:
        """The service's active incidents, oldest first."""
        return sorted((i for i in self.active.values() if i.service == service), key=lambda i: i.opened_at)

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
        await self.save(inc, now)
        self.active[inc.id] = inc
        self.emit(
            EventType.INCIDENT_OPENED, inc, f"incident {inc.id} opened: {inc.summary}", Severity.CRITICAL, now=now
        )
        self.on_change()
        return inc

    async def save(self, inc: Incident, now: float | None = None) -> None:
        """Write the incident, stamped `now` (the time of the decision that changed it; the clock's time when
        the change is not a reconcile's, such as a step that ended)."""
        inc.updated_at = time.time() if now is None else now
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

    async def acknowledge(self, inc: Incident, by: str, comment: str) -> None:
        """A human is on it: said once on the bus (and to on-call); no reminder is sent about it any more."""
        inc.acked_at, inc.acked_by, inc.ack_comment = time.time(), by, comment
        await self.save(inc)
        said = f": {comment}" if comment else ""
        self.emit(
            EventType.INCIDENT_ACKNOWLEDGED,
            inc,
            f"incident {inc.id} acknowledged by {by or 'someone'}{said}",
            acknowledged=inc.acknowledged,
        )
        log.info("incident acknowledged", by=by, comment=comment)

    async def resolve(self, inc: Incident, why: str) -> None:
        # The wall clock, not the reconcile's `now`: a remediation whose last step ended during this pass
        # must not end after the incident it belongs to.
        inc.state = IncidentState.RESOLVED
        inc.resolved_at = time.time()
        await self.save(inc)
        self.active.pop(inc.id, None)
        # the message that ends it says who was on it
        ack: dict[str, Any] = {"acknowledged": inc.acknowledged} if inc.acknowledged else {}
        self.emit(EventType.INCIDENT_RESOLVED, inc, f"incident {inc.id} resolved: {why}", firing=False, **ack)
        log.info("incident resolved", why=why)
        self.on_change()
