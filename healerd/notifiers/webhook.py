"""`webhook` notifier: the JSON body of the contract (version "1"), HMAC-signed when a secret is set."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import Field, field_validator

from .._urls import HttpUrl
from ..events import Severity
from ..paths import resolve_path
from .base import SEVERITY_ORDER, Delivery, Notifier, NotifierOptions, read_secret


class WebhookOptions(NotifierOptions):
    url: HttpUrl
    secret_file: Path | None = None
    secret_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    group_wait: float = 0.0

    @field_validator("secret_file")
    @classmethod
    def _secret_path(cls, v: Path | None) -> Path | None:
        return None if v is None else resolve_path(v)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def headline(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The event that best describes a group: a resolution when the group ends resolved (nothing went wrong
    after it), else the most severe firing event, else the latest."""
    problems = [i for i, e in enumerate(events) if e["status"] == "firing" and e["severity"] != "info"]
    resolved = [i for i, e in enumerate(events) if e["status"] == "resolved"]
    if resolved and (not problems or resolved[-1] > problems[-1]):
        return events[resolved[-1]]
    firing = [e for e in events if e["status"] == "firing"]
    if firing:
        return max(firing, key=lambda e: (SEVERITY_ORDER[Severity(e["severity"])], e["timestamp"]))
    return events[-1]


def group_summary(events: list[dict[str, Any]], head: dict[str, Any]) -> str:
    """One line for a group: the headline, or how many machines a storm hit."""
    if len(events) == 1:
        return str(head["summary"])
    machines = affected_machines(events)
    if len(machines) > 1 and head["status"] == "firing":
        return f"{len(machines)} machines of {head['service']} affected ({len(events)} events): {head['summary']}"
    return f"{len(events)} events on {head['service']}: {head['summary']}"


def affected_machines(events: list[dict[str, Any]]) -> list[str]:
    return sorted(
        {e["machine"] for e in events if e.get("machine") and e["status"] == "firing" and e["severity"] != "info"}
    )


def latest_detail(events: list[dict[str, Any]], head: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The newest `details[key]` of the group (`held`, `acknowledged`), preferring the headline's incident."""
    found = [e["details"][key] for e in events if isinstance(e.get("details"), dict) and e["details"].get(key)]
    mine = [
        e["details"][key]
        for e in events
        if e.get("incident") == head.get("incident") and isinstance(e.get("details"), dict) and e["details"].get(key)
    ]
    value = (mine or found or [None])[-1]
    return value if isinstance(value, dict) else None


def why_not_acting(events: list[dict[str, Any]], head: dict[str, Any]) -> dict[str, Any]:
    """What a message adds to its headline's details: the gate holding healerd back (while the group ends
    firing) and who acknowledged the incident."""
    out: dict[str, Any] = {}
    held = latest_detail(events, head, "held") if head["status"] == "firing" else None
    if held:
        out["held"] = held
    acked = latest_detail(events, head, "acknowledged")
    if acked:
        out["acknowledged"] = acked
    return out


def event_link(base_url: str, event: dict[str, Any]) -> str:
    if not base_url:
        return ""
    if event.get("incident"):
        return f"{base_url}/api/v1/incidents/{event['incident']}"
    return f"{base_url}/api/v1/services/{event['service']}"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookNotifier(Notifier):
    kind = "webhook"
    Config = WebhookOptions

    @property
    def opts(self) -> WebhookOptions:
        assert isinstance(self.options, WebhookOptions)
        return self.options

    def build(self, events: list[dict[str, Any]], message_id: str) -> dict[str, Any]:
        head = headline(events)
        summary = group_summary(events, head)
        return {
            "version": "1",
            "id": message_id,
            "type": head["type"],
            "status": head["status"],
            "severity": head["severity"],
            "service": head["service"],
            "machine": head.get("machine"),
            "incident": head.get("incident"),
            "summary": summary,
            "details": {**head.get("details", {}), **why_not_acting(events, head)},
            "timestamp": rfc3339(head["timestamp"]),
            "url": event_link(self.base_url, head),
            "events": [
                {k: e.get(k) for k in ("id", "type", "status", "severity", "machine", "incident", "summary")}
                | {"timestamp": rfc3339(e["timestamp"])}
                for e in events
            ],
        }

    def secrets(self) -> list[str]:
        secret = read_secret(self.opts.secret_file, self.opts.secret_env, "webhook secret")
        return [secret] if secret else []

    async def send(self, session: aiohttp.ClientSession, body: dict[str, Any], message_id: str) -> Delivery:
        payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        headers = {"Idempotency-Key": message_id, "User-Agent": "healerd", **self.opts.headers}
        secret = read_secret(self.opts.secret_file, self.opts.secret_env, "webhook secret")
        if secret:
            headers["X-Healerd-Signature"] = sign(secret, payload)
        return await self.post_json(session, self.opts.url, payload, headers)
