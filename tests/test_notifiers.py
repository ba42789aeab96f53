"""Notifiers: the messages they build (webhook contract, Slack Block Kit limits, Alertmanager alerts) and the
webhook's HMAC signature, checked by a real receiver on loopback.

`WEBHOOK_SCHEMA` and `schema_errors` are shared with tests/e2e/test_alerting.py: every webhook body a real
daemon sends is held to the same schema.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from healerd.events import Event, EventType, Severity, new_id
from healerd.notifiers.alertmanager import AlertmanagerNotifier, AlertmanagerOptions
from healerd.notifiers.base import Delivery, parse_retry_after
from healerd.notifiers.slack import SlackOptions
from healerd.notifiers.webhook import WebhookOptions
from healerd.plugins import NOTIFIER_KINDS

BASE_URL = "http://127.0.0.1:9464"
T0 = 1_760_000_000.25  # 2025-10-09T08:53:20.250Z

# ---------------------------------------------------------------------------------------------------------
# A small JSON-schema subset (jsonschema is not a dependency): type, enum, const, pattern, format date-time,
# required, properties, additionalProperties, items, minItems, minLength.

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
EVENT_TYPES = [t.value for t in EventType]
SEVERITIES = [s.value for s in Severity]
STATUSES = ["firing", "resolved"]
NULLABLE_STR = {"type": ["string", "null"]}

WEBHOOK_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "type", "status", "severity", "machine", "incident", "summary", "timestamp"],
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "type": {"enum": EVENT_TYPES},
        "status": {"enum": STATUSES},
        "severity": {"enum": SEVERITIES},
        "machine": NULLABLE_STR,
        "incident": NULLABLE_STR,
        "summary": {"type": "string", "minLength": 1},
        "timestamp": {"type": "string", "format": "date-time"},
    },
}

WEBHOOK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "version",
        "id",
        "type",
        "status",
        "severity",
        "service",
        "machine",
        "incident",
        "summary",
        "details",
        "timestamp",
        "url",
        "events",
    ],
    "properties": {
        "version": {"const": "1"},
        "id": {"type": "string", "pattern": r"^[0-9A-HJKMNP-TV-Z]{18}$"},
        "type": {"enum": EVENT_TYPES},
        "status": {"enum": STATUSES},
        "severity": {"enum": SEVERITIES},
        "service": {"type": "string", "minLength": 1},
        "machine": NULLABLE_STR,
        "incident": NULLABLE_STR,
        "summary": {"type": "string", "minLength": 1},
        "details": {"type": "object"},
        "timestamp": {"type": "string", "format": "date-time"},
        "url": {"type": "string", "pattern": r"^(https?://\S+)?$"},
        "events": {"type": "array", "minItems": 1, "items": WEBHOOK_EVENT_SCHEMA},
    },
}

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every way `value` breaks `schema`, each with its JSON path (an empty list when it is valid)."""
    errors: list[str] = []
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[k](value) for k in kinds):
            return [f"{path}: expected {' or '.join(kinds)}, got {type(value).__name__} {value!r:.80}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "date-time":
            if not RFC3339.match(value):
                errors.append(f"{path}: {value!r} is not an RFC 3339 date-time")
            else:
                try:
                    datetime.fromisoformat(value)
                except ValueError as exc:
                    errors.append(f"{path}: {value!r}: {exc}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required key {key!r}")
        props = schema.get("properties", {})
        for key, sub in value.items():
            if key in props:
                errors += schema_errors(sub, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected key {key!r}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def assert_webhook_body(body: Any) -> None:
    errors = schema_errors(body, WEBHOOK_SCHEMA)
    assert not errors, "webhook body breaks the schema:\n" + "\n".join(errors)


def verify_signature(secret: str, raw: bytes, header: str | None) -> bool:
    """What a receiver does: recompute HMAC-SHA256 over the raw body and compare in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256="))


def parse_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# ---------------------------------------------------------------------------------------------------------
# Slack Block Kit limits (https://api.slack.com/reference/block-kit)


def slack_limit_errors(body: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    blocks = body.get("blocks", [])
    if not isinstance(body.get("text"), str) or not body["text"]:
        errors.append("no top-level fallback text")
    if len(blocks) > 50:
        errors.append(f"{len(blocks)} blocks > 50")
    for i, block in enumerate(blocks):
        where = f"blocks[{i}] ({block.get('type')})"
        if block["type"] == "header":
            if block["text"]["type"] != "plain_text":
                errors.append(f"{where}: header text must be plain_text")
            if len(block["text"]["text"]) > 150:
                errors.append(f"{where}: header text {len(block['text']['text'])} > 150 chars")
        elif block["type"] == "section":
            if "text" not in block and "fields" not in block:
                errors.append(f"{where}: a section needs text or fields")
            if "text" in block and len(block["text"]["text"]) > 3000:
                errors.append(f"{where}: text {len(block['text']['text'])} > 3000 chars")
            fields = block.get("fields", [])
            if len(fields) > 10:
                errors.append(f"{where}: {len(fields)} fields > 10")
            for j, f in enumerate(fields):
                if len(f["text"]) > 2000:
                    errors.append(f"{where}.fields[{j}]: {len(f['text'])} > 2000 chars")
        elif block["type"] == "context":
            if len(block["elements"]) > 10:
                errors.append(f"{where}: {len(block['elements'])} elements > 10")
            for j, el in enumerate(block["elements"]):
                if len(el.get("text", "")) > 3000:
                    errors.append(f"{where}.elements[{j}]: > 3000 chars")
        elif block["type"] not in ("divider", "actions", "image"):
            errors.append(f"{where}: unexpected block type")
    return errors


def assert_slack_limits(body: dict[str, Any]) -> None:
    errors = slack_limit_errors(body)
    assert not errors, "Slack message breaks Block Kit limits:\n" + "\n".join(errors)


def slack_header(body: dict[str, Any]) -> str:
    headers = [b for b in body["blocks"] if b["type"] == "header"]
    assert len(headers) == 1, body["blocks"]
    text: str = headers[0]["text"]["text"]
    return text


def slack_texts(body: dict[str, Any]) -> list[str]:
    """Every piece of visible text of a Slack message, in block order."""
    out: list[str] = []
    for b in body["blocks"]:
        if "text" in b:
            out.append(b["text"]["text"])
        out += [f["text"] for f in b.get("fields", [])]
        out += [e.get("text", "") for e in b.get("elements", [])]
    return out


def event_listing(body: dict[str, Any]) -> tuple[list[str], int]:
    """The event lines of a Slack message's listing section, and the N of its "… and N more" (0 if none)."""
    listing = [b["text"]["text"] for b in body["blocks"] if b["type"] == "section" and "text" in b]
    assert len(listing) == 1, body["blocks"]
    lines = listing[0].splitlines()
    more = [m for line in lines if (m := re.fullmatch(r"… and (\d+) more", line))]
    assert len(more) <= 1, lines
    return [line for line in lines if " `" in line and not line.startswith("…")], int(more[0].group(1)) if more else 0


# ---------------------------------------------------------------------------------------------------------
# Events as the outbox stores them (Event.as_dict)


def ev(
    type_: EventType,
    *,
    t: float = T0,
    service: str = "web",
    machine: str | None = "web-1",
    incident: str | None = None,
    severity: Severity = Severity.INFO,
    firing: bool = True,
    summary: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return Event(
        type_,
        service,
        summary or f"{machine or service}: {type_.value}",
        t,
        machine=machine,
        incident=incident,
        severity=severity,
        firing=firing,
        details=details or {},
    ).as_dict()


def notifier(kind: str, **options: Any) -> Any:
    cls = NOTIFIER_KINDS.get(kind)
    assert cls is not None
    return cls(kind, cls.Config.model_validate(options), base_url=BASE_URL)


INC = new_id(T0)


def incident_story(machine: str = "web-1", incident: str = INC) -> list[dict[str, Any]]:
    """A small healing story, in order: unhealthy, incident opened, ..., incident resolved."""
    return [
        ev(
            EventType.MACHINE_UNHEALTHY,
            t=T0,
            machine=machine,
            severity=Severity.CRITICAL,
            details={"condition": "down"},
        ),
        ev(EventType.INCIDENT_OPENED, t=T0 + 0.1, machine=machine, incident=incident, severity=Severity.CRITICAL),
        ev(EventType.MACHINE_QUARANTINED, t=T0 + 0.5, machine=machine, incident=incident),
        ev(EventType.MACHINE_REPLACED, t=T0 + 3.0, machine=machine, incident=incident),
        ev(EventType.INCIDENT_RESOLVED, t=T0 + 4.0, machine=machine, incident=incident, firing=False),
    ]


# ---------------------------------------------------------------------------------------------------------
# Webhook


def test_webhook_body_of_a_group_follows_the_contract() -> None:
    hook = notifier("webhook", url="http://127.0.0.1:1/hook")
    events = incident_story()[:3]
    message_id = new_id(T0 + 1)
    body = hook.build(events, message_id)

    assert_webhook_body(body)
    json.dumps(body)  # serialisable as it is
    assert body["version"] == "1"
    assert body["id"] == message_id
    # the headline is the most severe firing event (the latest of equals): incident.opened
    assert (body["type"], body["status"], body["severity"]) == ("incident.opened", "firing", "critical")
    assert (body["service"], body["machine"], body["incident"]) == ("web", "web-1", INC)
    assert body["summary"].startswith("3 events on web: ")
    assert body["url"] == f"{BASE_URL}/api/v1/incidents/{INC}"
    assert [e["id"] for e in body["events"]] == [e["id"] for e in events]
    assert [e["type"] for e in body["events"]] == [e["type"] for e in events]
    for sent, original in zip(body["events"], events, strict=True):
        assert parse_rfc3339(sent["timestamp"]) == pytest.approx(original["timestamp"], abs=0.001)
    assert body["timestamp"] == "2025-10-09T08:53:20.350Z"  # incident.opened at T0 + 0.1


def test_webhook_body_of_a_resolved_incident_is_resolved() -> None:
    hook = notifier("webhook", url="http://127.0.0.1:1/hook")
    resolved = incident_story()[-1]
    body = hook.build([resolved], new_id(T0 + 5))
    assert_webhook_body(body)
    assert (body["type"], body["status"], body["severity"]) == ("incident.resolved", "resolved", "info")
    assert body["summary"] == resolved["summary"]  # one event: its own summary
    assert body["events"][0]["status"] == "resolved"


def test_webhook_body_without_machine_or_incident_links_the_service() -> None:
    hook = notifier("webhook", url="http://127.0.0.1:1/hook")
    e = ev(
        EventType.SERVICE_STATE_CHANGED,
        machine=None,
        severity=Severity.WARNING,
        details={"from": "optimal", "to": "degraded"},
    )
    body = hook.build([e], new_id(T0))
    assert_webhook_body(body)
    assert body["machine"] is None and body["incident"] is None
    assert body["details"] == {"from": "optimal", "to": "degraded"}
    assert body["url"] == f"{BASE_URL}/api/v1/services/web"


def test_schema_validator_catches_broken_bodies() -> None:
    """The validator the e2e tests rely on is not vacuous."""
    hook = notifier("webhook", url="http://127.0.0.1:1/hook")
    good = hook.build(incident_story()[:2], new_id(T0))
    assert schema_errors(good, WEBHOOK_SCHEMA) == []
    broken = {**good, "version": 1, "status": "open", "timestamp": "2025-10-09 08:53:20", "events": []}
    del broken["url"]
    errors = "\n".join(schema_errors(broken, WEBHOOK_SCHEMA))
    for what in ("$.version", "$.status", "$.timestamp", "$.events: fewer than 1", "missing required key 'url'"):
        assert what in errors


async def _capture(aiohttp_server_factory: Any, answer: str = "thanks") -> tuple[str, list[web.Request], list[bytes]]:
    requests: list[web.Request] = []
    bodies: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        requests.append(request)
        return web.Response(text=answer)

    app = web.Application()
    app.router.add_post("/hook", handle)
    start: Callable[[web.Application], Awaitable[str]] = aiohttp_server_factory
    return await start(app) + "/hook", requests, bodies


async def test_webhook_signature_is_hmac_sha256_of_the_raw_body(tmp_path: Path, aiohttp_server_factory: Any) -> None:
    url, requests, bodies = await _capture(aiohttp_server_factory)
    secret = "s3cr3t-with-üñïcode"
    (tmp_path / "secret").write_text(secret + "\n")  # a trailing newline is not part of the secret
    hook = notifier("webhook", url=url, secret_file=str(tmp_path / "secret"), headers={"X-Team": "sre"})
    message_id = new_id(T0)
    body = hook.build(incident_story(), message_id)

    async with aiohttp.ClientSession() as session:
        delivery = await hook.send(session, body, message_id)

    assert delivery == Delivery(200, "thanks", None)
    assert delivery.ok
    (req,), (raw,) = requests, bodies
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Idempotency-Key"] == message_id
    assert req.headers["X-Team"] == "sre"
    signature = req.headers["X-Healerd-Signature"]
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", signature)
    assert verify_signature(secret, raw, signature)
    assert not verify_signature("another secret", raw, signature)
    assert not verify_signature(secret, raw + b" ", signature)
    assert json.loads(raw) == body


async def test_webhook_without_a_secret_is_not_signed(aiohttp_server_factory: Any) -> None:
    url, requests, _ = await _capture(aiohttp_server_factory)
    hook = notifier("webhook", url=url)
    async with aiohttp.ClientSession() as session:
        assert (await hook.send(session, hook.build(incident_story()[:1], "ID"), "ID")).ok
    assert "X-Healerd-Signature" not in requests[0].headers


async def test_webhook_with_a_missing_secret_file_does_not_send_unsigned(
    tmp_path: Path, aiohttp_server_factory: Any
) -> None:
    url, requests, _ = await _capture(aiohttp_server_factory)
    hook = notifier("webhook", url=url, secret_file=str(tmp_path / "gone"))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="cannot read webhook secret file"):
            await hook.send(session, hook.build(incident_story()[:1], "ID"), "ID")
    assert requests == []


async def test_an_unreachable_receiver_is_a_delivery_without_status() -> None:
    hook = notifier("webhook", url="http://127.0.0.1:9/hook", timeout="2s")
    async with aiohttp.ClientSession() as session:
        delivery = await hook.send(session, hook.build(incident_story()[:1], "ID"), "ID")
    assert delivery.status is None and not delivery.ok and not delivery.permanent
    assert delivery.error and "127.0.0.1:9" in delivery.error


@pytest.mark.parametrize(
    ("status", "ok", "permanent"),
    [
        *[(200, True, False), (204, True, False), (400, False, True), (401, False, True), (404, False, True)],
        *[(408, False, False), (429, False, False), (500, False, False), (503, False, False), (None, False, False)],
    ],
)
def test_delivery_outcome_classes(status: int | None, ok: bool, permanent: bool) -> None:
    d = Delivery(status)
    assert (d.ok, d.permanent) == (ok, permanent)


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_30s = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 30, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 28 <= (parse_retry_after(in_30s) or 0) <= 31
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_wants_filters_by_type_severity_and_resolved() -> None:
    unhealthy = ev(EventType.MACHINE_UNHEALTHY, severity=Severity.WARNING)
    recovered = ev(EventType.MACHINE_RECOVERED, firing=False)
    opened = ev(EventType.INCIDENT_OPENED, incident=INC, severity=Severity.CRITICAL)
    assert all(notifier("webhook", url="http://x/").wants(e) for e in (unhealthy, recovered, opened))
    critical_only = notifier("webhook", url="http://x/", min_severity="critical", send_resolved=False)
    assert [critical_only.wants(e) for e in (unhealthy, recovered, opened)] == [False, False, True]
    only_incidents = notifier("webhook", url="http://x/", events=["incident.opened", "incident.resolved"])
    assert [only_incidents.wants(e) for e in (unhealthy, recovered, opened)] == [False, False, True]


def test_option_models() -> None:
    assert WebhookOptions(url="http://x/").group_wait == 0.0
    assert SlackOptions(webhook_url_env="SLACK").rate_limit == 1.0
    assert AlertmanagerOptions(url="http://am:9093/").url == "http://am:9093"
    with pytest.raises(ValueError, match="webhook_url_file"):
        SlackOptions()
    with pytest.raises(ValueError, match="http"):
        WebhookOptions(url="ftp://x/")


# ---------------------------------------------------------------------------------------------------------
# Slack


def storm(n: int, name_len: int = 200) -> list[dict[str, Any]]:
    """n machines with long names going down, each with its incident."""
    out = []
    for i in range(n):
        machine = f"m{i:03d}-" + "x" * (name_len - 5)
        assert len(machine) == name_len
        inc = new_id(T0 + i)
        out.append(
            ev(
                EventType.MACHINE_UNHEALTHY,
                t=T0 + i * 0.01,
                machine=machine,
                severity=Severity.CRITICAL,
                summary=f"{machine} is down: health CRITICAL: HTTP 500 from http://{machine}:8080/health",
            )
        )
        out.append(
            ev(
                EventType.MACHINE_QUARANTINED,
                t=T0 + i * 0.01 + 0.005,
                machine=machine,
                incident=inc,
                summary=f"{machine} quarantined",
            )
        )
    return out[:n]


def test_slack_message_of_100_events_with_200_char_names_stays_within_block_kit_limits() -> None:
    slack = notifier("slack", webhook_url_env="SLACK_URL")
    events = storm(100)
    body = slack.build(events, new_id(T0))
    json.dumps(body)

    assert_slack_limits(body)
    assert len(slack_header(body)) <= 150
    texts = slack_texts(body)
    everything = "\n".join(texts)
    more = [int(m) for m in re.findall(r"… and (\d+) more", everything)]
    assert more, f"no visible '… and N more' in:\n{everything[:2000]}"
    # the event list says how many it left out, and that adds up to 100
    shown, left_out = event_listing(body)
    assert shown and left_out and len(shown) + left_out == 100


def test_slack_every_field_is_cut_to_its_limit() -> None:
    slack = notifier("slack", webhook_url_env="SLACK_URL")
    long_service = "s" * 400
    events = [
        ev(
            EventType.MACHINE_UNHEALTHY,
            service=long_service,
            machine="m" * 5000,
            severity=Severity.CRITICAL,
            summary="y" * 10_000,
        )
    ]
    body = slack.build(events, new_id(T0))
    assert_slack_limits(body)
    assert len(body["text"]) <= 3000


@pytest.mark.parametrize("n", [1, 19, 20, 21, 50])
def test_slack_limits_hold_for_any_group_size(n: int) -> None:
    body = notifier("slack", webhook_url_env="SLACK_URL").build(storm(n, 200), new_id(T0))
    assert_slack_limits(body)
    shown, left_out = event_listing(body)
    assert shown and len(shown) + left_out == n  # the listing accounts for every event
    assert len(shown) <= 20


def test_slack_lists_a_single_event_with_a_huge_summary_cut_not_hidden() -> None:
    """One event whose summary alone is longer than a section (a chatty Nagios plugin, say) is shown cut."""
    body = notifier("slack", webhook_url_env="SLACK_URL").build(
        [ev(EventType.MACHINE_UNHEALTHY, severity=Severity.CRITICAL, summary="plugin said: " + "y" * 5000)], "ID"
    )
    assert_slack_limits(body)
    shown, left_out = event_listing(body)
    assert (len(shown), left_out) == (1, 0), f"listing: {shown} and {left_out} more"
    assert "plugin said: yyy" in shown[0]


def test_slack_firing_and_resolved_look_different() -> None:
    slack = notifier("slack", webhook_url_env="SLACK_URL")
    story = incident_story()
    firing = slack.build(story[:2], new_id(T0))
    resolved = slack.build(story[-1:], new_id(T0 + 5))
    for body in (firing, resolved):
        assert_slack_limits(body)
    assert slack_header(firing).startswith("CRITICAL")
    assert slack_header(resolved).startswith("RESOLVED")
    assert "RESOLVED" not in slack_header(firing)
    assert ":red_circle:" in "\n".join(slack_texts(firing))
    assert ":large_green_circle:" in "\n".join(slack_texts(resolved))
    assert ":red_circle:" not in "\n".join(slack_texts(resolved))
    assert resolved["text"].startswith("RESOLVED")  # the notification preview (fallback text) says it too
    assert firing["text"].startswith("CRITICAL")
    # the context links to the incident in healerd
    assert f"<{BASE_URL}/api/v1/incidents/{INC}|open in healerd>" in slack_texts(firing)


def test_slack_lists_what_healerd_did() -> None:
    body = notifier("slack", webhook_url_env="SLACK_URL").build(incident_story(), new_id(T0))
    fields = {f["text"].split("\n", 1)[0]: f["text"].split("\n", 1)[1] for f in body["blocks"][1]["fields"]}
    assert fields["*Service*"] == "web"
    assert fields["*Machine*"] == "web-1"
    assert fields["*Incident*"] == INC
    assert fields["*What healerd did*"] == "web-1: quarantined\nweb-1: replaced"


async def test_slack_posts_to_the_url_from_its_file(tmp_path: Path, aiohttp_server_factory: Any) -> None:
    url, _, bodies = await _capture(aiohttp_server_factory, answer="ok")
    (tmp_path / "slack-url").write_text(url + "\n")
    slack = notifier("slack", webhook_url_file=str(tmp_path / "slack-url"))
    body = slack.build(incident_story()[:2], new_id(T0))
    async with aiohttp.ClientSession() as session:
        delivery = await slack.send(session, body, "ID")
    assert delivery.ok and delivery.body == "ok"
    assert json.loads(bodies[0]) == body


# ---------------------------------------------------------------------------------------------------------
# Alertmanager

AM_LABELS = {"alertname", "service", "machine", "severity", "incident"}


def test_alertmanager_incident_fires_then_resolves_with_the_same_labels() -> None:
    am = notifier("alertmanager", url="http://127.0.0.1:9093")
    assert isinstance(am, AlertmanagerNotifier)
    story = incident_story()
    opened, resolved = story[1], story[-1]
    assert am.wants(opened) and am.wants(resolved)
    assert not am.wants(story[0])  # machine.unhealthy alone is not an Alertmanager alert

    fired = am.build([opened], new_id(T0))["alerts"]
    assert len(fired) == 1
    alert = fired[0]
    assert alert["labels"] == {
        "alertname": "HealerdIncident",
        "service": "web",
        "machine": "web-1",
        "severity": "critical",
        "incident": INC,
    }
    assert set(alert["labels"]) == AM_LABELS
    assert parse_rfc3339(alert["startsAt"]) == pytest.approx(opened["timestamp"], abs=0.001)
    assert "endsAt" not in alert
    assert alert["generatorURL"] == f"{BASE_URL}/api/v1/incidents/{INC}"
    assert alert["annotations"]["summary"] == opened["summary"]
    assert all(isinstance(v, str) for v in alert["labels"].values())

    assert am.repost() == {"alerts": [alert]}
    # the firing set is persisted by the engine and survives a restart
    reborn = notifier("alertmanager", url="http://127.0.0.1:9093")
    reborn.load_state(am.state())
    assert reborn.repost() == am.repost()

    ended = am.build([resolved], new_id(T0 + 5))["alerts"]
    assert len(ended) == 1
    assert ended[0]["labels"] == alert["labels"]
    assert ended[0]["startsAt"] == alert["startsAt"]
    assert parse_rfc3339(ended[0]["endsAt"]) == pytest.approx(resolved["timestamp"], abs=0.001)
    assert am.repost() is None  # nothing firing any more


def test_alertmanager_repost_returns_only_what_still_fires() -> None:
    am = notifier("alertmanager", url="http://127.0.0.1:9093")
    a, b = new_id(T0), new_id(T0 + 1)
    am.build(
        [
            ev(EventType.INCIDENT_OPENED, machine="web-1", incident=a, severity=Severity.CRITICAL),
            ev(EventType.INCIDENT_OPENED, t=T0 + 1, machine="web-2", incident=b, severity=Severity.CRITICAL),
            ev(
                EventType.SERVICE_STATE_CHANGED,
                machine=None,
                severity=Severity.CRITICAL,
                details={"from": "optimal", "to": "down"},
            ),
        ],
        new_id(T0 + 1),
    )
    firing = am.repost()
    assert firing is not None
    names = sorted((x["labels"]["alertname"], x["labels"].get("incident", "")) for x in firing["alerts"])
    assert names == [("HealerdIncident", a), ("HealerdIncident", b), ("HealerdServiceDown", "")]

    out = am.build(
        [
            ev(EventType.INCIDENT_RESOLVED, t=T0 + 9, machine="web-1", incident=a, firing=False),
            ev(
                EventType.SERVICE_STATE_CHANGED,
                t=T0 + 9,
                machine=None,
                severity=Severity.WARNING,
                details={"from": "down", "to": "degraded"},
            ),
        ],
        new_id(T0 + 9),
    )["alerts"]
    ended = {x["labels"]["alertname"]: x for x in out if "endsAt" in x}
    started = [x for x in out if "endsAt" not in x]
    assert set(ended) == {"HealerdIncident", "HealerdServiceDown"}
    assert ended["HealerdIncident"]["labels"]["incident"] == a
    assert [x["labels"]["alertname"] for x in started] == ["HealerdServiceDegraded"]
    still = am.repost()
    assert still is not None
    assert sorted(x["labels"]["alertname"] for x in still["alerts"]) == ["HealerdIncident", "HealerdServiceDegraded"]
    assert all("endsAt" not in x for x in still["alerts"])
    assert [x["labels"].get("incident") for x in still["alerts"] if x["labels"]["alertname"] == "HealerdIncident"] == [
        b
    ]


def test_alertmanager_refiring_keeps_the_first_start() -> None:
    am = notifier("alertmanager", url="http://127.0.0.1:9093")
    opened = ev(EventType.INCIDENT_OPENED, incident=INC, severity=Severity.CRITICAL)
    first = am.build([opened], "A")["alerts"][0]
    again = am.build([{**opened, "timestamp": T0 + 60}], "B")["alerts"][0]
    assert again["startsAt"] == first["startsAt"]
    assert am.repost() == {"alerts": [again]}


async def test_alertmanager_posts_the_alert_list_to_api_v2(aiohttp_server_factory: Any) -> None:
    got: list[Any] = []

    async def alerts(request: web.Request) -> web.Response:
        got.append((request.path, await request.json()))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/v2/alerts", alerts)
    url = await aiohttp_server_factory(app)
    am = notifier("alertmanager", url=url + "/")
    body = am.build([incident_story()[1]], "ID")
    async with aiohttp.ClientSession() as session:
        assert (await am.send(session, body, "ID")).ok
        # an empty group (e.g. only resolved alerts that were never firing) posts nothing
        assert (await am.send(session, {"alerts": []}, "ID2")) == Delivery(200, "nothing to post")
    assert got == [("/api/v2/alerts", body["alerts"])]


def _ev(type_: str, status: str, severity: str, machine: str | None = "web-1", ts: float = 1.0) -> dict[str, Any]:
    return {
        "id": f"{type_}-{ts}",
        "type": type_,
        "status": status,
        "severity": severity,
        "service": "web",
        "machine": machine,
        "incident": "inc-1",
        "check": None,
        "summary": f"{type_} {machine}",
        "details": {},
        "timestamp": ts,
    }


def test_a_group_that_ends_healed_is_headlined_resolved() -> None:
    from healerd.notifiers.webhook import headline

    group = [
        _ev("incident.opened", "firing", "critical", ts=1),
        _ev("remediation.succeeded", "firing", "info", ts=2),
        _ev("incident.resolved", "resolved", "info", ts=3),
    ]
    assert headline(group)["type"] == "incident.resolved" and headline(group)["status"] == "resolved"
    # a new problem after the resolution is the headline again
    group.append(_ev("machine.unhealthy", "firing", "critical", machine="web-2", ts=4))
    assert headline(group)["status"] == "firing" and headline(group)["machine"] == "web-2"


def test_a_storm_is_summarised_by_how_many_machines_it_hit() -> None:
    from healerd.notifiers.slack import SlackNotifier, SlackOptions

    storm = [_ev("machine.unhealthy", "firing", "critical", machine=f"web-{i}", ts=i) for i in range(10)]
    body = SlackNotifier("s", SlackOptions(webhook_url_env="X")).build(storm, "m1")
    header = body["blocks"][0]["text"]["text"]
    assert "10 machines of web affected" in header and len(header) <= 150


def test_a_slack_url_file_with_a_typo_is_refused_without_quoting_it(tmp_path: Path) -> None:
    from pydantic import ValidationError

    typo = tmp_path / "slack-url"
    typo.write_text("htps//hooks.slack.com/services/T0SECRET/B0SECRET/s3cr3tpath\n")
    with pytest.raises(ValidationError) as info:
        SlackOptions(webhook_url_file=typo)
    message = str(info.value)
    assert "does not hold an http(s) URL" in message and str(typo) in message
    assert "s3cr3tpath" not in message and "T0SECRET" not in message


def test_a_delivery_error_never_quotes_a_secret_of_the_notifier() -> None:
    from healerd.notifiers.base import secret_parts

    url = "https://hooks.slack.com/services/T0SECRET/B0SECRET/s3cr3tpath"
    d = Delivery(404, body="no such hook /services/T0SECRET/B0SECRET/s3cr3tpath", error=f"failed on {url}")
    clean = d.redacted(secret_parts(url))
    assert "s3cr3tpath" not in clean.body + (clean.error or "") and "<redacted>" in clean.body
    assert clean.status == 404


def test_alertmanager_a_rolled_back_rollout_fires_until_the_next_one_completes() -> None:
    am = notifier("alertmanager", url="http://127.0.0.1:9093")
    back = ev(EventType.ROLLOUT_ROLLED_BACK, machine=None, severity=Severity.WARNING, details={"version": "v3-slow"})
    assert am.wants(back)
    (fired,) = am.build([back], new_id(T0))["alerts"]
    assert fired["labels"] == {
        "alertname": "HealerdRolloutRolledBack",
        "service": "web",
        "severity": "warning",
        "version": "v3-slow",
    }
    assert "endsAt" not in fired and am.repost() == {"alerts": [fired]}
    assert not am.wants(ev(EventType.ROLLOUT_STARTED, machine=None))  # a start is news, not an alert
    done = ev(EventType.ROLLOUT_COMPLETED, t=T0 + 60, machine=None, firing=False, details={"version": "v2"})
    (ended,) = am.build([done], new_id(T0 + 60))["alerts"]
    assert ended["labels"] == fired["labels"] and parse_rfc3339(ended["endsAt"]) == pytest.approx(T0 + 60, abs=0.001)
    assert am.repost() is None


def test_alertmanager_alerts_say_what_they_mean_and_link_a_runbook() -> None:
    am = notifier("alertmanager", url="http://127.0.0.1:9093", runbook_base="https://wiki.example/healerd")
    (alert,) = am.build([ev(EventType.INCIDENT_OPENED, incident=INC, severity=Severity.CRITICAL)], "A")["alerts"]
    notes = alert["annotations"]
    assert notes["runbook_url"] == "https://wiki.example/healerd#healerdincident"
    assert notes["description"].startswith("a machine is down; healerd opened an incident")
    assert "service web" in notes["description"] and INC in notes["description"]


# ---------------------------------------------------------------------------------------------------------
# Why healerd is not acting, and who is on it, in every notifier's message

HELD = {
    "reason": "max_unhealthy",
    "detail": "2 machines unhealthy at once, more than max_unhealthy (1)",
    "since": T0 + 0.2,
    "what_to_do": "check the monitoring path first",
}
ACK = {"by": "alice", "at": T0 + 60, "comment": "on it"}


def held_story() -> list[dict[str, Any]]:
    """A machine down and held back by a warning-level gate: the incident (critical) heads the message."""
    return [
        ev(EventType.INCIDENT_OPENED, machine="web-1", incident=INC, severity=Severity.CRITICAL),
        ev(
            EventType.REMEDIATION_SUPPRESSED,
            t=T0 + 0.2,
            incident=INC,
            severity=Severity.WARNING,
            summary="remediation of web-1 held back (max_unhealthy): 2 machines unhealthy",
            details={"reason": "max_unhealthy", "held": HELD},
        ),
    ]


def test_every_notifier_says_which_gate_holds_back_with_its_figures_and_what_to_do() -> None:
    hook = notifier("webhook", url="http://127.0.0.1:1/hook").build(held_story(), new_id(T0))
    assert hook["type"] == "incident.opened" and hook["details"]["held"] == HELD  # though not the headline's own
    assert_webhook_body(hook)

    slack = notifier("slack", webhook_url_env="HOME").build(held_story(), new_id(T0))
    fields = [f["text"] for b in slack["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    (held,) = [f for f in fields if f.startswith("*Held back*")]
    assert "max_unhealthy: 2 machines unhealthy at once, more than max_unhealthy (1)" in held
    assert "What to do: check the monitoring path first" in held

    am = notifier("alertmanager", url="http://127.0.0.1:9093")
    alerts = am.build(held_story(), new_id(T0))["alerts"]
    (alert,) = [a for a in alerts if a["labels"]["alertname"] == "HealerdRemediationHeldBack"]
    description = alert["annotations"]["description"]
    assert "Held back by max_unhealthy: 2 machines unhealthy at once, more than max_unhealthy (1)" in description
    assert "What to do: check the monitoring path first" in description

    recovered = [ev(EventType.INCIDENT_RESOLVED, incident=INC, firing=False)]
    assert "held" not in notifier("webhook", url="http://127.0.0.1:1/hook").build(recovered, "m")["details"]


def test_an_acknowledgement_shows_in_each_notifier() -> None:
    acked = ev(EventType.INCIDENT_ACKNOWLEDGED, incident=INC, summary="acknowledged", details={"acknowledged": ACK})
    resolved = ev(EventType.INCIDENT_RESOLVED, incident=INC, firing=False, details={"acknowledged": ACK})

    hook = notifier("webhook", url="http://127.0.0.1:1/hook").build([resolved], new_id(T0))
    assert hook["status"] == "resolved" and hook["details"]["acknowledged"] == ACK

    slack = notifier("slack", webhook_url_env="HOME").build([resolved], new_id(T0))
    fields = [f["text"] for b in slack["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert "*Acknowledged*\nby alice at 2025-10-09T08:54:20.250Z: on it" in fields

    am = notifier("alertmanager", url="http://127.0.0.1:9093")
    (fired,) = am.build(held_story()[:1], new_id(T0))["alerts"]
    assert am.wants(acked)
    (updated,) = am.build([acked], new_id(T0 + 61))["alerts"]
    assert updated["labels"] == fired["labels"] and "endsAt" not in updated  # the same alert, still firing
    assert updated["annotations"]["acknowledged"] == "by alice at 2025-10-09T08:54:20.250Z: on it"
    assert am.repost() == {"alerts": [updated]}  # re-posted with it while it fires
