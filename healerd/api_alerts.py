"""`POST /api/v1/alerts`: Alertmanager's webhook receiver (payload version 4), authorised by the API token when
`daemon.api_token_file` is set (Alertmanager's `http_config: {authorization: {credentials_file: …}}`). See
alert_inputs.py."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .alert_inputs import AlertInputs
from .api import _query, _read_body, json_error, json_response
from .api_models import InputError, NoQuery, decode_json

ALERT_INPUTS: web.AppKey[AlertInputs] = web.AppKey("alert_inputs")
#: what a refusal past a bound answers: the request was understood, part of it cannot be taken now (Alertmanager
#: retries only a 5xx; a refused alert comes again with a later notification of its group)
PARTLY_REFUSED = 422


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _check_alert(i: int, alert: object) -> None:
    """Refuse, naming the field, what Alertmanager never sends: healerd reads labels and annotations as mappings,
    status as firing or resolved, endsAt as a time."""
    where = f"alerts[{i}]"
    if not isinstance(alert, dict):
        raise InputError(
            "bad alert", f"{where} must be an object with labels, as Alertmanager sends it (got {_kind(alert)})"
        )
    if not isinstance(alert.get("labels"), dict):
        raise InputError(
            "bad alert", f"{where}.labels must be a mapping of label names to values (got {_kind(alert.get('labels'))})"
        )
    notes = alert.get("annotations")
    if notes is not None and not isinstance(notes, dict):
        raise InputError(
            "bad alert", f'{where}.annotations must be a mapping like {{"summary": "…"}} (got {_kind(notes)})'
        )
    status = alert.get("status", "firing")
    if status not in ("firing", "resolved"):
        raise InputError("bad alert", f"{where}.status must be firing or resolved (got {str(status)[:40]!r})")
    for key in ("startsAt", "endsAt"):
        if alert.get(key) is not None and not isinstance(alert[key], str):
            raise InputError("bad alert", f"{where}.{key} must be an RFC 3339 time like 2030-01-01T00:00:00Z")


async def receive(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    payload = decode_json(await _read_body(request))
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        return json_error(
            400, "not an Alertmanager webhook", 'expected {"version": "4", "alerts": [...]} as Alertmanager sends it'
        )
    if str(payload.get("version", "4")) != "4":
        return json_error(
            400, "unknown payload version", f"version {str(payload.get('version'))[:40]!r}; healerd reads version 4"
        )
    for i, alert in enumerate(payload["alerts"]):
        _check_alert(i, alert)
    answer = request.app[ALERT_INPUTS].receive(payload)
    if not answer["refused"]:
        return json_response(answer)
    return json_response({"error": "alerts refused", "detail": _refusal(answer), **answer}, status=PARTLY_REFUSED)


def _refusal(answer: dict[str, Any]) -> str:
    refused = answer["refused"]
    return (
        f"{answer['refused_total']} alert(s) refused, {answer['accepted']} taken (the taken ones apply): "
        f"{refused[0]['why']} (refused lists each alert with its reason)"
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/alerts", receive)
