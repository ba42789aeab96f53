"""`POST /api/v1/alerts`: Alertmanager's webhook receiver (payload version 4), authorised by the API token
(Alertmanager's `http_config: {authorization: {credentials_file: …}}`). See alert_inputs.py."""

from __future__ import annotations

from aiohttp import web

from .alert_inputs import AlertInputs
from .api import _query, _read_body, json_error, json_response
from .api_models import NoQuery, decode_json

ALERT_INPUTS: web.AppKey[AlertInputs] = web.AppKey("alert_inputs")


async def receive(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    payload = decode_json(await _read_body(request))
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        return json_error(
            400, "not an Alertmanager webhook", 'expected {"version": "4", "alerts": [...]} as Alertmanager sends it'
        )
    if str(payload.get("version", "4")) != "4":
        return json_error(
            400, "unknown payload version", f"version {payload.get('version')!r}; healerd reads version 4"
        )
    bad = [
        i for i, a in enumerate(payload["alerts"]) if not isinstance(a, dict) or not isinstance(a.get("labels"), dict)
    ]
    if bad:
        return json_error(400, "bad alert", f"alerts[{bad[0]}] needs labels (a mapping), as Alertmanager sends them")
    return json_response(request.app[ALERT_INPUTS].receive(payload))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/alerts", receive)
