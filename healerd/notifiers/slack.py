"""`slack` notifier: an incoming webhook with Block Kit, always within Slack's limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import field_validator, model_validator

from ..paths import resolve_path
from .base import Delivery, Notifier, NotifierOptions, read_secret
from .webhook import event_link, group_summary, headline, rfc3339, why_not_acting

HEADER_MAX = 150
SECTION_MAX = 3000
FIELD_MAX = 2000
MAX_FIELDS = 10
MAX_BLOCKS = 50
MAX_LINES = 20  # events listed before "… and N more"

_DID = {
    "machine.quarantined": "quarantined",
    "machine.replaced": "replaced",
    "remediation.started": "remediation started",
    "remediation.succeeded": "remediated",
    "remediation.failed": "remediation FAILED, needs a human",
    "remediation.suppressed": "held back",
    "remediation.storm_cleared": "storm cooldown cleared",
    "incident.acknowledged": "acknowledged",
}
_ICON = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}


class SlackOptions(NotifierOptions):
    webhook_url_file: Path | None = None
    webhook_url_env: str | None = None
    rate_limit: float = 1.0  # Slack accepts about one message per second per webhook
    send_resolved: bool = True

    @field_validator("webhook_url_file")
    @classmethod
    def _path(cls, v: Path | None) -> Path | None:
        return None if v is None else resolve_path(v)

    @model_validator(mode="after")
    def _source(self) -> SlackOptions:
        if self.webhook_url_file is None and self.webhook_url_env is None:
            raise ValueError("set webhook_url_file (a file holding the Slack webhook URL) or webhook_url_env")
        if self.webhook_url_file is not None and self.webhook_url_file.is_file():
            url = read_secret(self.webhook_url_file, None, "Slack webhook URL")
            if url is None or not _looks_like_url(url):
                # never quote the content: it is a secret, typo or not
                raise ValueError(
                    f"{self.webhook_url_file} does not hold an http(s) URL; put the webhook URL Slack gave you "
                    "on one line (https://hooks.slack.com/services/…)"
                )
        return self


def _looks_like_url(value: str) -> bool:
    from urllib.parse import urlsplit

    url = urlsplit(value)
    return url.scheme in ("http", "https") and bool(url.netloc) and " " not in value


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SlackNotifier(Notifier):
    kind = "slack"
    Config = SlackOptions

    @property
    def opts(self) -> SlackOptions:
        assert isinstance(self.options, SlackOptions)
        return self.options

    def build(self, events: list[dict[str, Any]], message_id: str) -> dict[str, Any]:
        head = headline(events)
        firing = head["status"] == "firing"
        state = head["severity"].upper() if firing else "RESOLVED"
        icon = _ICON.get(head["severity"], "") if firing else ":large_green_circle:"
        summary = group_summary(events, head)
        header = cut(f"{state} · {head['service']}: {summary}", HEADER_MAX)
        machines = sorted({e["machine"] for e in events if e.get("machine")})
        incidents = sorted({e["incident"] for e in events if e.get("incident")})
        did = [f"{e.get('machine') or e['service']}: {_DID[e['type']]}" for e in events if e["type"] in _DID]
        fields = [
            ("Service", head["service"]),
            ("Machine", self._list(machines, 10)),
            ("Incident", self._list(incidents, 5)),
            ("What healerd did", self._list(did, 10) if did else "watching"),
        ]
        extra = why_not_acting(events, head)
        if "held" in extra:
            h = extra["held"]
            todo = f"\nWhat to do: {h['what_to_do']}" if h.get("what_to_do") else ""
            fields.append(("Held back", f"{h.get('reason')}: {h.get('detail')}{todo}"))
        if "acknowledged" in extra:
            a = extra["acknowledged"]
            said = f": {a['comment']}" if a.get("comment") else ""
            when = rfc3339(a["at"]) if isinstance(a.get("at"), int | float) else "?"
            fields.append(("Acknowledged", f"by {a.get('by') or 'someone'} at {when}{said}"))
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": cut(f"*{k}*\n{v}", FIELD_MAX)} for k, v in fields[:MAX_FIELDS]],
            },
        ]
        budget = SECTION_MAX - 40  # room kept for the "… and N more" line
        shown: list[str] = []
        for e in events[:MAX_LINES]:
            line = f"{icon} `{e['type']}` {e['summary']}"
            room = budget - sum(len(x) + 1 for x in shown)
            if len(line) > room:
                if shown:
                    break
                line = cut(line, room)  # a single huge event is cut, never hidden
            shown.append(line)
        hidden = len(events) - len(shown)
        text = "\n".join([*shown, f"… and {hidden} more"] if hidden else shown)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
        link = event_link(self.base_url, head)
        if link:
            blocks.append(
                {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(f"<{link}|open in healerd>", 3000)}]}
            )
        return {
            "text": cut(f"{state} {head['service']}: {summary}", SECTION_MAX),
            "blocks": blocks[:MAX_BLOCKS],
        }

    @staticmethod
    def _list(items: list[str], limit: int) -> str:
        if not items:
            return "-"
        shown = [cut(i, 180) for i in items[:limit]]
        more = f"\n… and {len(items) - limit} more" if len(items) > limit else ""
        return "\n".join(shown) + more

    def secrets(self) -> list[str]:
        url = read_secret(self.opts.webhook_url_file, self.opts.webhook_url_env, "Slack webhook URL")
        return [url] if url else []

    async def send(self, session: aiohttp.ClientSession, body: dict[str, Any], message_id: str) -> Delivery:
        url = read_secret(self.opts.webhook_url_file, self.opts.webhook_url_env, "Slack webhook URL")
        assert url is not None
        if not _looks_like_url(url):
            where = self.opts.webhook_url_file or f"${self.opts.webhook_url_env}"
            return Delivery(
                None, error=f"{where} does not hold an http(s) URL; put the webhook URL Slack gave you in it"
            )
        return await self.post_json(session, url, json.dumps(body).encode(), {})
