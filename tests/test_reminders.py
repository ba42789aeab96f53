"""Reminders (healerd.reminders) with a fake clock: an open incident is told again every renotify_interval of
each notifier until someone acknowledges it or it resolves; a notifier without the option never reminds."""

from __future__ import annotations

from typing import Any

from healerd.events import Event, EventType, Severity
from healerd.plugins import NOTIFIER_KINDS
from healerd.reminders import Reminders
from healerd.store import IncidentRecord

T0 = 1_760_000_000.0


def hook(name: str, **options: Any) -> Any:
    cls = NOTIFIER_KINDS.get("webhook")
    assert cls is not None
    return cls(name, cls.Config.model_validate({"url": "http://127.0.0.1:1/", **options}), base_url="")


def event(type_: EventType, t: float, **details: Any) -> dict[str, Any]:
    summary = "incident I1 opened: web-1 is down: health CRITICAL" if type_ is EventType.INCIDENT_OPENED else "x"
    return Event(
        type_, "web", summary, t, machine="web-1", incident="I1", severity=Severity.CRITICAL, details=details
    ).as_dict()


NOTIFIERS = {"hourly": hook("hourly", renotify_interval="1h"), "never": hook("never")}
ROUTES = {"web": ("hourly", "never")}


def test_an_open_incident_is_reminded_every_interval_until_acknowledged() -> None:
    r = Reminders()
    r.observe(event(EventType.INCIDENT_OPENED, T0))
    assert r.due(T0 + 3599, ROUTES, NOTIFIERS) == []
    (first,) = r.due(T0 + 3600, ROUTES, NOTIFIERS)
    assert first.notifier == "hourly"
    e = first.event
    assert (e["type"], e["incident"], e["severity"]) == ("incident.reminder", "I1", "critical")
    assert e["summary"].startswith("incident I1 still open after 1.0h, not acknowledged: web-1 is down")
    assert e["summary"].endswith("healerd incidents ack I1")
    assert r.due(T0 + 3601, ROUTES, NOTIFIERS) == []  # once per interval
    held = {"reason": "storm_cooldown", "detail": "200s left", "what_to_do": "healerd storm clear web"}
    r.observe(event(EventType.REMEDIATION_SUPPRESSED, T0 + 4000, held=held))
    (second,) = r.due(T0 + 7200, ROUTES, NOTIFIERS)
    assert "Held back (storm_cooldown): 200s left. What to do: healerd storm clear web." in second.event["summary"]

    r.observe(event(EventType.INCIDENT_ACKNOWLEDGED, T0 + 7300))
    assert [r.due(T0 + 3600 * k, ROUTES, NOTIFIERS) for k in range(3, 6)] == [[], [], []]


def test_a_resolved_incident_is_forgotten_and_a_restart_reminds_one_interval_later() -> None:
    r = Reminders()
    r.observe(event(EventType.INCIDENT_OPENED, T0))
    r.observe(event(EventType.INCIDENT_RESOLVED, T0 + 10))
    assert r.due(T0 + 7200, ROUTES, NOTIFIERS) == []

    after = Reminders()  # a new run (or a new cluster leader) takes the store's open incidents
    rec = IncidentRecord("I2", "web", "web-2", "open", "replace-machine", T0, T0, None, "web-2 is down", None, None, {})
    acked = rec._replace(id="I3", acked_at=T0 + 5, acked_by="bob")
    after.seed([rec, acked], T0 + 86400)
    assert after.due(T0 + 86400 + 3599, ROUTES, NOTIFIERS) == []
    (item,) = after.due(T0 + 86400 + 3600, ROUTES, NOTIFIERS)
    assert item.event["incident"] == "I2"  # not the acknowledged I3


def test_a_renotify_interval_of_0_is_refused_with_an_example() -> None:
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match=r"renotify_interval must be above 0 .*like 4h"):
        hook("x", renotify_interval="0s")
