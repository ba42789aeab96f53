"""The HTTP API, status page, health endpoints and /metrics (aiohttp)."""

from __future__ import annotations

import asyncio
import hmac
import html
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from .daemon import Daemon

DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, error: str, detail: Any = None) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    if request.method not in ("GET", "HEAD", "OPTIONS") and daemon.api_token is not None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not token or not hmac.compare_digest(token, daemon.api_token):
            return json_error(401, "unauthorized", "send Authorization: Bearer <token> (the api_token_file's content)")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason, exc.text if exc.text != f"{exc.status}: {exc.reason}" else None)
    except Exception as exc:  # an API bug answers 500 in JSON; the daemon keeps running
        request.app.logger.exception("API handler failed")
        return json_error(500, "internal error", f"{type(exc).__name__}: {exc}")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if daemon.monitor.ready:
        return web.json_response({"status": "ready"})
    pending = daemon.monitor.checks_without_result
    return web.json_response({"status": "starting", "checks_without_result": pending}, status=503)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[DAEMON].metrics.registry
    # Rendering a large fleet's exposition takes a while: keep it off the event loop.
    body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def services(request: web.Request) -> web.Response:
    monitor = request.app[DAEMON].monitor
    return web.json_response({"services": [monitor.service_view(n) for n in sorted(monitor.book.services)]})


async def service(request: web.Request) -> web.Response:
    monitor = request.app[DAEMON].monitor
    name = request.match_info["name"]
    if name not in monitor.book.services:
        return json_error(404, "unknown service", f"no service named {name!r}; see GET /api/v1/services")
    view = monitor.service_view(name)
    view["machine_list"] = [monitor.machine_view(name, m) for m in sorted(monitor.book.services[name].machines)]
    return web.json_response(view)


async def machines(request: web.Request) -> web.Response:
    monitor = request.app[DAEMON].monitor
    wanted = request.query.get("service")
    condition = request.query.get("condition")
    if wanted is not None and wanted not in monitor.book.services:
        return json_error(404, "unknown service", f"no service named {wanted!r}")
    out = []
    for name in sorted(monitor.book.services):
        if wanted is not None and name != wanted:
            continue
        for mid in sorted(monitor.book.services[name].machines):
            view = monitor.machine_view(name, mid)
            if condition is None or view["condition"] == condition:
                out.append(view)
    return web.json_response({"machines": out})


async def machine(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    monitor = daemon.monitor
    service_name, mid = request.match_info["service"], request.match_info["machine"]
    if monitor.book.machine(service_name, mid) is None:
        return json_error(404, "unknown machine", f"no machine {mid!r} in service {service_name!r}")
    view = monitor.machine_view(service_name, mid)
    view["events"] = await daemon.store.events(service=service_name, machine=mid, limit=50)
    return web.json_response(view)


async def events(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    try:
        limit = min(int(request.query.get("limit", "100")), 1000)
    except ValueError:
        return json_error(400, "bad limit", "limit must be a whole number (at most 1000)")
    types = [t for t in request.query.get("type", "").split(",") if t] or None
    rows = await daemon.store.events(request.query.get("service"), request.query.get("machine"), limit, types)
    return web.json_response({"events": rows})


async def scheduler(request: web.Request) -> web.Response:
    monitor = request.app[DAEMON].monitor
    return web.json_response({"checks": len(monitor.checks), **monitor.scheduler.stats.as_dict()})


_STATE_COLOURS = {
    "optimal": "#1a7f37",
    "degraded": "#9a6700",
    "down": "#cf222e",
    "up": "#1a7f37",
    "impaired": "#9a6700",
    "flapping": "#8250df",
    "pending": "#57606a",
}


async def status_page(request: web.Request) -> web.Response:
    monitor = request.app[DAEMON].monitor
    esc = html.escape
    rows = []
    for name in sorted(monitor.book.services):
        sv = monitor.service_view(name)
        colour = _STATE_COLOURS.get(sv["state"], "#000")
        rows.append(
            f"<h2>{esc(name)} <span style='color:{colour}'>{esc(sv['state'])}</span></h2>"
            f"<p>{esc(sv['reason'])}</p><table><tr><th>machine</th><th>address</th><th>lifecycle</th>"
            "<th>condition</th><th>checks</th></tr>"
        )
        for mid in sorted(monitor.book.services[name].machines):
            mv = monitor.machine_view(name, mid)
            checks = "<br>".join(
                f"{esc(c)}: {esc(str(v['hard_state']))} ({esc(v['state_type'])}) {esc(v['message'] or '')}"
                for c, v in mv["checks"].items()
            )
            colour = _STATE_COLOURS.get(mv["condition"], "#000")
            rows.append(
                f"<tr><td>{esc(mid)}</td><td>{esc(mv['address'])}</td><td>{esc(mv['lifecycle'])}</td>"
                f"<td style='color:{colour}'>{esc(mv['condition'])}</td><td>{checks}</td></tr>"
            )
        rows.append("</table>")
    engine = request.app[DAEMON].remediation
    incidents_open = sorted(engine.incidents.values(), key=lambda i: i.opened_at, reverse=True)
    if incidents_open:
        rows.append(
            "<h2>Open incidents</h2><table><tr><th>incident</th><th>state</th><th>service</th>"
            "<th>machine</th><th>summary</th></tr>"
        )
        for inc in incidents_open:
            rows.append(
                f"<tr><td><a href='/api/v1/incidents/{esc(inc.id)}'>{esc(inc.id)}</a></td>"
                f"<td>{esc(inc.state.value)}</td><td>{esc(inc.service)}</td><td>{esc(inc.machine)}</td>"
                f"<td>{esc(inc.summary)}</td></tr>"
            )
        rows.append("</table>")
    mode = engine.status()
    rows.insert(0, f"<p>mode <b>{esc(mode['mode'])}</b>{' (paused)' if mode['paused'] else ''}</p>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='5'>"
        "<title>healerd</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}</style></head>"
        f"<body><h1>healerd</h1><p>updated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} · "
        "<a href='/api/v1/services'>services</a> · <a href='/api/v1/machines'>machines</a> · "
        "<a href='/api/v1/events'>events</a> · <a href='/api/v1/incidents'>incidents</a> · "
        "<a href='/api/v1/quarantine'>quarantine</a> · <a href='/metrics'>metrics</a></p>"
        + "".join(rows)
        + "</body></html>"
    )
    return web.Response(text=page, content_type="text/html")


async def not_found(request: web.Request) -> web.Response:
    return json_error(404, "not found", f"no endpoint {request.method} {request.path}")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


async def incidents(request: web.Request) -> web.Response:
    engine = request.app[DAEMON].remediation
    state = request.query.get("state")
    return web.json_response({"incidents": await engine.incident_list(state=state)})


async def incident(request: web.Request) -> web.Response:
    engine = request.app[DAEMON].remediation
    view = await engine.incident_view(request.match_info["id"])
    if view is None:
        return json_error(
            404, "unknown incident", f"no incident {request.match_info['id']!r}; see GET /api/v1/incidents"
        )
    return web.json_response(view)


async def incident_resolve(request: web.Request) -> web.Response:
    engine = request.app[DAEMON].remediation
    body = await _json_body(request)
    try:
        return web.json_response(await engine.resolve_by_hand(request.match_info["id"], str(body.get("by", ""))))
    except LookupError as exc:
        return json_error(404, "unknown incident", str(exc))
    except RuntimeError as exc:
        return json_error(409, "cannot resolve now", str(exc))


async def quarantine(request: web.Request) -> web.Response:
    return web.json_response({"quarantined": await request.app[DAEMON].remediation.quarantined()})


async def quarantine_release(request: web.Request) -> web.Response:
    engine = request.app[DAEMON].remediation
    body = await _json_body(request)
    to_rotation = bool(body.get("to_rotation", request.query.get("to_rotation") in ("1", "true")))
    timeout = float(body.get("timeout", 60))
    try:
        return web.json_response(await engine.release(request.match_info["machine"], to_rotation, timeout))
    except LookupError as exc:
        return json_error(404, "not quarantined", str(exc))
    except RuntimeError as exc:
        return json_error(409, "checks failed", str(exc))


async def quarantine_terminate(request: web.Request) -> web.Response:
    engine = request.app[DAEMON].remediation
    try:
        return web.json_response(await engine.terminate(request.match_info["machine"]))
    except LookupError as exc:
        return json_error(404, "not quarantined", str(exc))


async def get_mode(request: web.Request) -> web.Response:
    return web.json_response(request.app[DAEMON].remediation.status())


async def set_mode(request: web.Request) -> web.Response:
    from .config import Mode

    daemon = request.app[DAEMON]
    engine = daemon.remediation
    body = await _json_body(request)
    service = body.get("service")
    if service is not None and service not in daemon.config.services:
        return json_error(404, "unknown service", f"no service named {service!r}")
    if "mode" in body:
        raw = body["mode"]
        try:
            mode = None if raw in (None, "config") else Mode(raw)
        except ValueError:
            return json_error(400, "bad mode", f"mode must be one of observe, dry-run, auto (or null), got {raw!r}")
        await engine.set_mode(mode, service)
    if "paused" in body:
        if not isinstance(body["paused"], bool):
            return json_error(400, "bad paused", "paused must be true or false")
        await engine.set_paused(body["paused"])
    if "mode" not in body and "paused" not in body:
        return json_error(400, "nothing to change", 'send {"mode": "observe|dry-run|auto"} and/or {"paused": true}')
    return web.json_response(engine.status())


async def silences(request: web.Request) -> web.Response:
    return web.json_response({"silences": await request.app[DAEMON].remediation.silences()})


async def add_silence(request: web.Request) -> web.Response:
    from .durations import parse_duration

    daemon = request.app[DAEMON]
    body = await _json_body(request)
    service, machine = body.get("service"), body.get("machine")
    if service is None and machine is None:
        return json_error(400, "silence needs a target", 'send {"service": "web"} and/or {"machine": "web-1"}')
    if service is not None and service not in daemon.config.services:
        return json_error(404, "unknown service", f"no service named {service!r}")
    try:
        duration = parse_duration(body.get("duration", "1h"))
    except ValueError as exc:
        return json_error(400, "bad duration", str(exc))
    if duration <= 0:
        return json_error(400, "bad duration", "duration must be greater than 0")
    silence = await daemon.remediation.add_silence(
        service, machine, duration, str(body.get("comment", "")), str(body.get("created_by", ""))
    )
    return web.json_response(silence, status=201)


async def delete_silence(request: web.Request) -> web.Response:
    if not await request.app[DAEMON].remediation.delete_silence(request.match_info["id"]):
        return json_error(404, "unknown silence", f"no silence {request.match_info['id']!r}")
    return web.json_response({"deleted": request.match_info["id"]})


async def notifications(request: web.Request) -> web.Response:
    try:
        limit = min(int(request.query.get("limit", "50")), 500)
    except ValueError:
        return json_error(400, "bad limit", "limit must be a whole number (at most 500)")
    return web.json_response(await request.app[DAEMON].alerting.view(limit))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", status_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/services", services)
    app.router.add_get("/api/v1/services/{name}", service)
    app.router.add_get("/api/v1/machines", machines)
    app.router.add_get("/api/v1/machines/{service}/{machine}", machine)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/scheduler", scheduler)
    app.router.add_get("/api/v1/incidents", incidents)
    app.router.add_get("/api/v1/incidents/{id}", incident)
    app.router.add_post("/api/v1/incidents/{id}/resolve", incident_resolve)
    app.router.add_get("/api/v1/quarantine", quarantine)
    app.router.add_post("/api/v1/quarantine/{machine}/release", quarantine_release)
    app.router.add_post("/api/v1/quarantine/{machine}/terminate", quarantine_terminate)
    app.router.add_get("/api/v1/mode", get_mode)
    app.router.add_post("/api/v1/mode", set_mode)
    app.router.add_get("/api/v1/silences", silences)
    app.router.add_post("/api/v1/silences", add_silence)
    app.router.add_delete("/api/v1/silences/{id}", delete_silence)
    app.router.add_get("/api/v1/notifications", notifications)
