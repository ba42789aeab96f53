"""The status page (`GET /`, Jinja2 templates in healerd/templates, autoescaped, no external assets) and the
history it draws (`GET /api/v1/history`), with the evidence bundle listing it links to (docs/status-page.md)."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .api import ALERTING, ENGINE, MONITOR, SETTINGS, STORE, _query, json_error, json_response
from .api_models import HistoryQuery, NoQuery, StatusQuery
from .history import MACHINE_WIDTH, SERVICE_WIDTH
from .remediation import forensics
from .status_page import SPANS, PageInput, page_model, result_uptime, uptime


def setup(app: web.Application) -> None:
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("healerd", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


async def status_page(request: web.Request) -> web.StreamResponse:
    query = _query(request, StatusQuery)
    model = await page_model(
        PageInput(
            request.app[MONITOR],
            request.app[ENGINE],
            request.app[STORE],
            request.app[SETTINGS].cluster,
            request.app[ALERTING].receipts.failing_now(),
        )
    )
    template = "main.html" if query.part == "main" else "status.html"
    # The page's one script and one style block carry this answer's nonce: no other inline script (an injected
    # one) may run, and nothing on the page comes from elsewhere.
    nonce = secrets.token_urlsafe(18)
    response = aiohttp_jinja2.render_template(template, request, {"m": model, "nonce": nonce})
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return response


async def history(request: web.Request) -> web.Response:
    q = _query(request, HistoryQuery)
    monitor = request.app[MONITOR]
    if q.service not in monitor.book.services:
        return json_error(404, "unknown service", f"no service named {q.service!r}; see GET /api/v1/services")
    store = request.app[STORE]
    now = time.time()
    since = now - q.since
    if q.machine is not None:
        if q.machine not in monitor.book.services[q.service].machines:
            return json_error(
                404, "unknown machine", f"no machine {q.machine!r} in {q.service}; see GET /api/v1/machines"
            )
        checks = [q.check] if q.check else sorted(monitor.book.services[q.service].machines[q.machine].checks)
        width = MACHINE_WIDTH
        series = {c: await store.history.buckets(q.service, q.machine, c, since) for c in checks}
    else:
        checks = [q.check] if q.check else await store.history.checks(q.service, since)
        width = SERVICE_WIDTH
        series = {c: await store.history.buckets(q.service, "", c, since) for c in checks}
    state = await store.history.buckets(q.service, "", "", now - 7 * 86400)
    out: dict[str, Any] = {
        "service": q.service,
        "machine": q.machine,
        "since": since,
        "width": width,
        "checks": {},
    }
    if q.machine is None:
        out["uptime"] = {span: uptime(state, now - seconds) for span, seconds in SPANS.items()}
        out["state"] = [
            {"start": b["bucket"], "up_s": round(b["up_s"], 3), "down_s": round(b["down_s"], 3)}
            for b in state
            if b["bucket"] >= since
        ]
    for check, rows in series.items():
        out["checks"][check] = {
            "uptime": result_uptime(rows, since),
            "buckets": [
                {
                    "start": b["bucket"],
                    "runs": b["runs"],
                    "ok": b["ok"],
                    "warning": b["warning"],
                    "critical": b["critical"],
                    "unknown": b["unknown"],
                    "latency_avg": round(b["dur_sum"] / b["runs"], 6) if b["runs"] else None,
                }
                for b in rows
            ],
        }
    return json_response(out)


async def bundle(request: web.Request) -> web.Response:
    """The evidence bundle of an incident: its files with their size and SHA-256 (the manifest)."""
    _query(request, NoQuery)
    incident = request.match_info["id"]
    root = request.app[SETTINGS].config.daemon.state_dir / "forensics"
    found = await asyncio.to_thread(forensics.listing, root, incident)
    if found is None:
        return json_error(
            404, "no bundle", f"incident {incident!r} has no evidence bundle here (see GET /api/v1/quarantine)"
        )
    return json_response(found)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", status_page)
    app.router.add_get("/api/v1/history", history)
    app.router.add_get("/api/v1/incidents/{id}/bundle", bundle)
