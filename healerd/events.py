"""Event types (one table), the event value, and the in-process event bus."""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("healerd.events")


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class EventType(enum.StrEnum):
    MACHINE_UNHEALTHY = "machine.unhealthy"
    MACHINE_RECOVERED = "machine.recovered"
    MACHINE_FLAPPING = "machine.flapping"
    MACHINE_QUARANTINED = "machine.quarantined"
    MACHINE_REPLACED = "machine.replaced"
    SERVICE_STATE_CHANGED = "service.state_changed"
    REMEDIATION_STARTED = "remediation.started"
    REMEDIATION_SUCCEEDED = "remediation.succeeded"
    REMEDIATION_FAILED = "remediation.failed"
    REMEDIATION_ESCALATED = "remediation.escalated"  # a rung of the ladder did not mend it: the next one is tried
    REMEDIATION_SUPPRESSED = "remediation.suppressed"
    INCIDENT_OPENED = "incident.opened"
    INCIDENT_RESOLVED = "incident.resolved"
    INCIDENT_ACKNOWLEDGED = "incident.acknowledged"  # a human is on it: no more reminders
    INCIDENT_REMINDER = "incident.reminder"  # still open and not acknowledged (a notifier's renotify_interval)
    STORM_CLEARED = "remediation.storm_cleared"  # an operator ended a storm cooldown
    MODE_CHANGED = "mode.changed"  # an operator changed the mode or paused (details: what, by)
    CHECK_UNKNOWN = "check.unknown"
    STORE_DEGRADED = "store.degraded"
    MACHINE_RETIRED = "machine.retired"
    ROTATION_REPAIRED = "rotation.repaired"
    ZONE_LOST = "zone.lost"  # most of a zone down while the others are healthy: its share launched elsewhere
    ZONE_RETURNED = "zone.returned"  # a lost zone's machines answer again (retired or quarantined, not rejoined)
    ROLLOUT_STARTED = "rollout.started"
    ROLLOUT_PROMOTED = "rollout.promoted"
    ROLLOUT_COMPLETED = "rollout.completed"
    ROLLOUT_ROLLED_BACK = "rollout.rolled_back"
    ROLLOUT_PAUSED = "rollout.paused"
    ROLLOUT_RESUMED = "rollout.resumed"


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(now: float | None = None) -> str:
    """A short, sortable, unique id: 48 bits of milliseconds and 40 random bits, Crockford base32 (18 chars)."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 40) | int.from_bytes(os.urandom(5), "big")
    chars = []
    for _ in range(18):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    service: str
    summary: str
    timestamp: float
    machine: str | None = None
    check: str | None = None
    incident: str | None = None
    severity: Severity = Severity.INFO
    firing: bool = True  # False for the 'resolved' side of a condition (recovered, stopped flapping)
    details: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", new_id(self.timestamp))

    @property
    def status(self) -> str:
        return "firing" if self.firing else "resolved"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type.value,
            "status": self.status,
            "severity": self.severity.value,
            "service": self.service,
            "machine": self.machine,
            "check": self.check,
            "incident": self.incident,
            "summary": self.summary,
            "details": self.details,
            "timestamp": self.timestamp,
        }


Subscriber = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out: subscribers must be quick (queue the event, update a gauge).

    A subscriber that raises is logged and the others still receive the event. In a cluster every node follows
    the health of the whole fleet, but each event is this node's to record and alert on only when it made it
    (its own machines' checks; service-wide ones on the leader): the others are published `mirrored`, and
    reach only the subscribers that asked for them (gauges, the engine's wake-up).
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._mirror_subscribers: list[Subscriber] = []

    def subscribe(self, fn: Subscriber, *, mirrored: bool = False) -> None:
        """`mirrored`: also receive the events this node follows but another node records."""
        self._subscribers.append(fn)
        if mirrored:
            self._mirror_subscribers.append(fn)

    def publish(self, event: Event, *, mirrored: bool = False) -> None:
        for fn in self._mirror_subscribers if mirrored else self._subscribers:
            try:
                fn(event)
            except Exception:  # one broken consumer must not starve the others
                log.exception(
                    "event subscriber failed",
                    subscriber=getattr(fn, "__qualname__", repr(fn)),
                    event_type=event.type.value,
                )

    def publish_all(self, events: list[Event], *, mirrored: bool = False) -> None:
        for event in events:
            self.publish(event, mirrored=mirrored)
