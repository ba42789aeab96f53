"""The status page (`GET /`, Jinja2 templates in healerd/templates, autoescaped, no external assets) and the
history it draws (`GET /api/v1/history`), with the evidence bundle listing it links to (DESIGN §17)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .api import ENGINE, MONITOR, SETTINGS, STORE, _query, json_error, json_response
from .api_models import HistoryQuery, NoQuery, StatusQuery
from .history import MACHINE_WIDTH, SERVICE_WIDTH
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
        PageInput(request.app[MONITOR], request.app[ENGINE], request.app[STORE], request.app[SETTINGS].cluster)
    )
    template = "main.html" if query.part == "main" else "status.html"
    response = aiohttp_jinja2.render_template(template, request, {"m": model})
    response.headers["Cache-Control"] = "no-store"
    # nothing on the page comes from elsewhere: say so to the browser too
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src 'self'"
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
    path = root / incident
    if path.parent != root or not (path / "manifest.json").is_file():
        return json_error(
            404, "no bundle", f"incident {incident!r} has no evidence bundle here (see GET /api/v1/quarantine)"
        )

    def read() -> dict[str, Any]:
        manifest = json.loads((path / "manifest.json").read_text())
        files = [
            {"name": name, "sha256": digest, "bytes": (path / name).stat().st_size if (path / name).is_file() else None}
            for name, digest in sorted(manifest.get("files", {}).items())
        ]
        return {"incident": incident, "path": str(path), "files": files, "manifest": manifest}

    return json_response(await asyncio.to_thread(read))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", status_page)
    app.router.add_get("/api/v1/history", history)
    app.router.add_get("/api/v1/incidents/{id}/bundle", bundle)
