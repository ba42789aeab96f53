"""`alertmanager` notifier: alerts through Alertmanager's API v2, re-posted while firing so they do not
time out, resolved by posting them again with `endsAt`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import aiohttp
from pydantic import field_validator

from .._urls import HttpUrl
from ..durations import parse_duration, require_above_zero
from .base import Delivery, Notifier, NotifierOptions
from .webhook import event_link, rfc3339

#: event type -> (alertname, firing?) ; service states and flapping map by their details
_INCIDENT = "HealerdIncident"
_FAILED = "HealerdRemediationFailed"
_HELD = "HealerdRemediationHeldBack"
_FLAPPING = "HealerdMachineFlapping"
_UNKNOWN = "HealerdCheckUnknown"
#: a rollout rolled back (the candidate was worse, or failed): firing until the service's next rollout completes
_ROLLED_BACK = "HealerdRolloutRolledBack"
#: the state store unreachable (paged by every node straight to Alertmanager): the down machines in its annotations
_STORE = "HealerdStoreUnreachable"
_SERVICE = {"down": "HealerdServiceDown", "degraded": "HealerdServiceDegraded"}


class AlertmanagerOptions(NotifierOptions):
    url: HttpUrl
    repost_interval: float = 60.0  # well inside Alertmanager's resolve_timeout (5m)
    group_wait: float = 0.0
    #: runbook_url of each alert: this base + "#" + the alert name (e.g. your copy of docs/remediation.md)
    runbook_base: HttpUrl = "https://github.com/healerd/healerd/blob/main/docs/alerting.md"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return v.rstrip("/")

    @field_validator("repost_interval", mode="before")
    @classmethod
    def _repost(cls, v: object) -> float:
        # 0 would post every firing alert again on every pass of the outbox
        return require_above_zero(parse_duration(v, what="repost_interval"), what="repost_interval", example="1m")


#: what each alert means and what to do first, for on-call (the event's own summary says what happened)
_MEANING = {
    _INCIDENT: "a machine is down; healerd opened an incident and replaces it unless a safety gate holds it back",
    _FAILED: "healerd could not remediate the machine: the incident is escalated, a human is needed",
    _HELD: "a safety gate holds the remediation back; the status page says which and why",
    _FLAPPING: "the machine keeps changing state; it is reported, not replaced",
    _UNKNOWN: "a check cannot decide (its plugin fails or is missing); the machine is not judged by it",
    _ROLLED_BACK: "a new image version was worse or failed and healerd rolled it back; known-good is unchanged",
    _STORE: "healerd cannot reach its state store: checks go on, nothing is remediated until it is back",
    "HealerdServiceDown": "fewer serving machines than min_healthy: the service is down",
    "HealerdServiceDegraded": "the service runs below desired or with an impaired machine",
}


def _describe(name: str, e: dict[str, Any]) -> str:
    where = " ".join(f"{k} {e[k]}" for k in ("service", "machine", "incident") if e.get(k))
    text = f"{_MEANING.get(name, name)} ({where}). {e['summary']}"
    held = (e.get("details") or {}).get("held")
    if isinstance(held, dict) and held.get("reason") and held.get("what_to_do") and "What to do" not in text:
        text += f" Held back by {held['reason']}: {held.get('detail', '')}. What to do: {held['what_to_do']}"
    return text


def _acknowledged(ack: dict[str, Any]) -> str:
    said = f": {ack['comment']}" if ack.get("comment") else ""
    when = rfc3339(ack["at"]) if isinstance(ack.get("at"), int | float) else "?"
    return f"by {ack.get('by') or 'someone'} at {when}{said}"[:1000]


def _key(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True)


class AlertmanagerNotifier(Notifier):
    kind = "alertmanager"
    Config = AlertmanagerOptions

    def __init__(self, name: str, options: NotifierOptions, *, base_url: str = "") -> None:
        super().__init__(name, options, base_url=base_url)
        self.firing: dict[str, dict[str, Any]] = {}  # persisted by the alerting engine (state())

    @property
    def opts(self) -> AlertmanagerOptions:
        assert isinstance(self.options, AlertmanagerOptions)
        return self.options

    def wants(self, event: dict[str, Any]) -> bool:
        return event["type"] in (
            "incident.opened",
            "incident.resolved",
            "incident.acknowledged",
            "remediation.failed",
            "remediation.suppressed",
            "machine.flapping",
            "service.state_changed",
            "rollout.rolled_back",
            "rollout.completed",
            "store.degraded",  # paged while the store is unreachable
        ) and super().wants(event)

    def state(self) -> str:
        return json.dumps(self.firing)

    def load_state(self, text: str | None) -> None:
        self.firing = json.loads(text) if text else {}

    def _alert(
        self, name: str, e: dict[str, Any], severity: str, machine: bool = True, incident: bool = True
    ) -> dict[str, Any]:
        labels = {"alertname": name, "service": e["service"], "severity": severity}
        if machine and e.get("machine"):
            labels["machine"] = e["machine"]
        if incident and e.get("incident"):
            labels["incident"] = e["incident"]
        return {
            "labels": labels,
            "annotations": {
                "summary": e["summary"][:1000],
                "description": _describe(name, e)[:2000],
                "runbook_url": f"{self.opts.runbook_base}#{name.lower()}",
                "healerd_event": e["type"],
            },
            "startsAt": rfc3339(e["timestamp"]),
            "generatorURL": event_link(self.base_url, e) or "http://healerd.invalid/",
        }

    def _fire(self, alert: dict[str, Any]) -> dict[str, Any]:
        key = _key(alert["labels"])
        if key in self.firing:
            alert["startsAt"] = self.firing[key]["startsAt"]
        self.firing[key] = alert
        return alert

    def _resolve(self, labels_match: dict[str, str], ts: float) -> list[dict[str, Any]]:
        out = []
        for key, alert in list(self.firing.items()):
            if all(alert["labels"].get(k) == v for k, v in labels_match.items()):
                del self.firing[key]
                out.append({**alert, "endsAt": rfc3339(ts)})
        return out

    def build(self, events: list[dict[str, Any]], message_id: str) -> dict[str, Any]:
        alerts: list[dict[str, Any]] = []
        for e in events:
            t = e["type"]
            if t == "incident.opened":
                alerts.append(self._fire(self._alert(_INCIDENT, e, e["severity"])))
            elif t in ("remediation.failed", "remediation.suppressed"):
                alerts.append(
                    self._fire(self._alert(_FAILED if t == "remediation.failed" else _HELD, e, e["severity"]))
                )
            elif t == "incident.acknowledged":
                alerts += self._annotate(e)
            elif t == "incident.resolved":
                alerts += self._resolve({"service": e["service"], "incident": e.get("incident") or "-"}, e["timestamp"])
            elif t == "machine.flapping":
                if e["status"] == "firing":
                    alerts.append(self._fire(self._alert(_FLAPPING, e, "warning", incident=False)))
                else:
                    alerts += self._resolve(
                        {"alertname": _FLAPPING, "service": e["service"], "machine": e.get("machine") or "-"},
                        e["timestamp"],
                    )
            elif t == "check.unknown":
                if e["status"] == "firing":
                    alert = self._alert(_UNKNOWN, e, "warning", incident=False)
                    alert["labels"]["check"] = e.get("check") or "-"
                    alerts.append(self._fire(alert))
                else:
                    match = {"alertname": _UNKNOWN, "service": e["service"], "check": e.get("check") or "-"}
                    if e.get("machine"):
                        match["machine"] = e["machine"]
                    alerts += self._resolve(match, e["timestamp"])
            elif t == "rollout.rolled_back":
                alert = self._alert(_ROLLED_BACK, e, e["severity"], machine=False, incident=False)
                alert["labels"]["version"] = str(e.get("details", {}).get("version", ""))
                alerts += self._resolve({"alertname": _ROLLED_BACK, "service": e["service"]}, e["timestamp"])
                alerts.append(self._fire(alert))
            elif t == "rollout.completed":
                alerts += self._resolve({"alertname": _ROLLED_BACK, "service": e["service"]}, e["timestamp"])
            elif t == "store.degraded":
                if e["status"] == "firing":
                    alerts.append(self._fire(self._alert(_STORE, e, "critical", machine=False, incident=False)))
                else:
                    alerts += self._resolve({"alertname": _STORE}, e["timestamp"])
            elif t == "service.state_changed":
                details = e.get("details", {})
                old, new = details.get("from"), details.get("to")
                if old in _SERVICE:
                    alerts += self._resolve({"alertname": _SERVICE[old], "service": e["service"]}, e["timestamp"])
                if new in _SERVICE:
                    alerts.append(
                        self._fire(self._alert(_SERVICE[new], e, e["severity"], machine=False, incident=False))
                    )
        return {"alerts": alerts}

    def _annotate(self, e: dict[str, Any]) -> list[dict[str, Any]]:
        """The incident's firing alerts again, with who acknowledged it (annotation `acknowledged`): same
        labels, so Alertmanager updates them rather than opening new ones."""
        ack = (e.get("details") or {}).get("acknowledged")
        if not e.get("incident") or not isinstance(ack, dict):
            return []
        out = []
        for alert in self.firing.values():
            if alert["labels"].get("incident") == e["incident"] and alert["labels"].get("service") == e["service"]:
                alert["annotations"] = {**alert["annotations"], "acknowledged": _acknowledged(ack)}
                out.append(alert)
        return out

    def test_alert(self, event: dict[str, Any], ends_at: float) -> dict[str, Any]:
        """A short-lived alert that does not touch the firing set."""
        return {**self._alert("HealerdTest", event, "info"), "endsAt": rfc3339(ends_at)}

    def repost(self) -> dict[str, Any] | None:
        """The firing alerts again, so Alertmanager does not resolve them by timeout."""
        return {"alerts": list(self.firing.values())} if self.firing else None

    async def send(self, session: aiohttp.ClientSession, body: dict[str, Any], message_id: str) -> Delivery:
        if not body.get("alerts"):
            return Delivery(200, "nothing to post")
        return await self.post_json(session, f"{self.opts.url}/api/v2/alerts", json.dumps(body["alerts"]).encode(), {})


def reposts_due(notifiers: Iterable[Notifier], last: dict[str, float], now: float) -> list[tuple[str, dict[str, Any]]]:
    """The Alertmanager notifiers whose `repost_interval` has passed since `last` (updated), with their firing
    alerts to post again; the first call only starts each one's clock."""
    out = []
    for n in notifiers:
        if not isinstance(n, AlertmanagerNotifier):
            continue
        if now - last.get(n.name, now) < n.opts.repost_interval:
            last.setdefault(n.name, now)
            continue
        last[n.name] = now
        body = n.repost()
        if body is not None:
            out.append((n.name, body))
    return out
