"""Reminders: an incident still open and not acknowledged is told to on-call again every `renotify_interval`
of a notifier (Nagios' notification_interval); acknowledging it stops them. Pure: it follows the events,
and says at `now` which reminders are due."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .durations import format_age
from .events import EventType, new_id
from .store import OutboxItem

if TYPE_CHECKING:
    from .notifiers import Notifier
    from .store.interface import IncidentRecord


@dataclass
class _Open:
    service: str
    machine: str
    summary: str
    opened_at: float
    severity: str = "critical"
    acknowledged: bool = False
    held: dict[str, Any] | None = None
    #: when every notifier was told first (opened_at; a restart's time for an incident a previous run told)
    first_told: float = 0.0
    #: notifier -> when it was last reminded
    told: dict[str, float] = field(default_factory=dict)


class Reminders:
    def __init__(self) -> None:
        self.open: dict[str, _Open] = {}

    def seed(self, records: Iterable[IncidentRecord], now: float) -> None:
        """The store's unresolved incidents (this node starts delivering): the first reminder comes one
        interval from now, not at once for every incident a previous run had told already."""
        for r in records:
            if r.id not in self.open:
                acked = r.acked_at is not None
                self.open[r.id] = _Open(
                    r.service, r.machine, r.summary, r.opened_at, acknowledged=acked, first_told=now
                )

    def observe(self, event: dict[str, Any]) -> None:
        inc = event.get("incident")
        if not inc:
            return
        kind = event["type"]
        if kind == EventType.INCIDENT_OPENED:
            summary = str(event["summary"]).removeprefix(f"incident {inc} opened: ")
            at = event["timestamp"]
            self.open[inc] = _Open(
                event["service"], event.get("machine") or "", summary, at, event["severity"], first_told=at
            )
        elif kind == EventType.INCIDENT_RESOLVED:
            self.open.pop(inc, None)
        elif (o := self.open.get(inc)) is not None:
            if kind == EventType.INCIDENT_ACKNOWLEDGED:
                o.acknowledged = True
            elif kind == EventType.REMEDIATION_SUPPRESSED:
                held = event.get("details", {}).get("held")
                o.held = held if isinstance(held, dict) else None
            elif kind == EventType.REMEDIATION_STARTED:
                o.held = None

    def due(
        self, now: float, routes: Mapping[str, tuple[str, ...]], notifiers: Mapping[str, Notifier]
    ) -> list[OutboxItem]:
        """The reminders to send now (each notifier after its own interval), marked as sent."""
        items = []
        for inc, o in self.open.items():
            if o.acknowledged:
                continue
            for name in routes.get(o.service, ()):
                n = notifiers.get(name)
                interval = n.options.renotify_interval if n is not None else None
                if n is None or not interval or now - o.told.get(name, o.first_told) < interval:
                    continue
                o.told[name] = now
                event = self._event(inc, o, now)
                if n.wants(event):
                    items.append(OutboxItem(name, o.service, event, now))
        return items

    @staticmethod
    def _event(inc: str, o: _Open, now: float) -> dict[str, Any]:
        held = o.held
        why = f" Held back ({held['reason']}): {held.get('detail', '')}." if held else ""
        todo = f" What to do: {held['what_to_do']}." if held and held.get("what_to_do") else ""
        return {
            "id": new_id(now),
            "type": EventType.INCIDENT_REMINDER.value,
            "status": "firing",
            "severity": o.severity,
            "service": o.service,
            "machine": o.machine or None,
            "check": None,
            "incident": inc,
            "summary": f"incident {inc} still open after {format_age(now - o.opened_at)}, not acknowledged: "
            f"{o.summary}.{why}{todo} Acknowledge it to stop these reminders: healerd incidents ack {inc}",
            "details": {"opened_at": o.opened_at, **({"held": held} if held else {})},
            "timestamp": now,
        }
