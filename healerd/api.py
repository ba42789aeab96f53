"""The HTTP API's frame and its core endpoints (aiohttp): the components it reads through typed `AppKey`s, the
middleware that refuses (api_access.py) and answers every failure in JSON, typed input; /healthz, /readyz,
/metrics, and the services, machines, events, scheduler, incidents, quarantine, mode, silences and notifications
under /api/v1. The status page, rollouts, cluster and Alertmanager endpoints live in the other api_*.py."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from .alerting_views import outbox_view
from .api_access import SAFE_METHODS, Gate, by, check_request
from .api_models import (
    MAX_BODY,
    Acknowledge,
    EventsQuery,
    IncidentsQuery,
    InputError,
    MachinesQuery,
    ModeChange,
    NoBody,
    NoQuery,
    NotificationsQuery,
    Release,
    Resolve,
    SilenceCreate,
    decode_json,
    parse_body,
    parse_query,
    path_value,
)
from .events import Event, EventType
from .monitor_views import machine_view, service_view
from .providers.base import ProviderError
from .store import STORE_FAULTS, Fenced

if TYPE_CHECKING:
    from .access import AccessBook
    from .alerting import Alerting
    from .cluster import Cluster
    from .config import Config
    from .metrics import Metrics
    from .monitor import Monitor
    from .remediation.engine import RemediationEngine
    from .store import BaseStore


class ApiSettings(Protocol):
    """What the API reads of the running daemon: the config and the token in force now (a reload replaces
    them), and the cluster this node is part of (None: alone)."""

    @property
    def config(self) -> Config: ...
    @property
    def access(self) -> AccessBook: ...
    @property
    def cluster(self) -> Cluster | None: ...


#: one typed key per component the API reads: the API depends on them, not on the daemon
SETTINGS: web.AppKey[ApiSettings] = web.AppKey("settings", ApiSettings)
MONITOR: web.AppKey[Monitor] = web.AppKey("monitor")
ENGINE: web.AppKey[RemediationEngine] = web.AppKey("remediation")
STORE: web.AppKey[BaseStore] = web.AppKey("store")
ALERTING: web.AppKey[Alerting] = web.AppKey("alerting")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
GATE: web.AppKey[Gate] = web.AppKey("gate", Gate)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)
#: what the state store's database raises when it fails (its OSErrors are told apart by the store's fault)
_DATABASE_ERRORS = tuple(e for e in STORE_FAULTS if not issubclass(e, OSError))

#: How long a client may take to send its (at most MAX_BODY bytes) body.
BODY_TIMEOUT = 10.0
#: How long a connection may stay without a whole request head (a client trickling its headers) or idle
#: between requests: the server's keep-alive timer, which aiohttp also runs from the connection's start.
HEADER_TIMEOUT = 10.0


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """JSON that every parser reads: a NaN or infinity (a plugin's perfdata, say) becomes null."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False)


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(value, status=status, headers=headers, dumps=dumps)


def json_error(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": error, "detail": detail}, status=status, headers=headers)


#: on every answer: nothing may frame it, sniff it into another type or learn where its links came from; a
#: page that wants more (the status page: its own script and style) sets its own Content-Security-Policy
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _store_failing(request: web.Request, exc: BaseException) -> web.Response:
    """The state store failed under a request (disk full, database away): 503 saying what still works."""
    store = request.app[STORE]
    reason = store.fault or f"{type(exc).__name__}: {exc}"
    return json_error(
        503,
        "state store failing",
        f"the state store {store.where} is failing ({reason[:300]}), so healerd could not "
        f"{'read what this request asks for' if request.method in SAFE_METHODS else 'save this change'}. Checks, "
        f"alerts, the status page, /healthz and /api/v1/machines go on; retry once it works again. {store.remedy}",
    )


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request: Host and Origin, then JSON for changes and the bearer token, then the handler; a refusal
    or a failure answers JSON `{"error", "detail"}`. Every answer carries SECURITY_HEADERS."""
    response = await _answer(request, handler)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    try:
        daemon = settings.config.daemon
        check_request(request, daemon)
        verdict = await request.app[GATE].admit(request, daemon, settings.access, time.time())
        if not verdict.allowed:
            return json_error(verdict.status, verdict.error, verdict.detail)
        for key, value in request.match_info.items():
            path_value(key, value)
        return await handler(request)
    except InputError as exc:
        return json_error(exc.status, exc.error, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            detail = f"{request.path[:200]} takes {allowed}, not {request.method[:20]}"
            return json_error(405, "method not allowed", detail, headers={hdrs.ALLOW: allowed})
        if isinstance(exc, web.HTTPNotFound):
            return json_error(
                404, "not found", f"no endpoint {request.method[:20]} {request.path[:200]}; see docs/api.md"
            )
        return json_error(exc.status, exc.reason, exc.text if exc.text != f"{exc.status}: {exc.reason}" else None)
    except Fenced:
        return json_error(
            409,
            "not the leader",
            "this node lost the cluster's lease while saving the change; send it to the new leader "
            "(healerd cluster status shows it)",
        )
    except _DATABASE_ERRORS as exc:
        return _store_failing(request, exc)
    except ClientGone as exc:  # the client's problem, not healerd's: nobody reads the answer
        request.app.logger.debug("request body cut short: %s", exc)
        return json_error(400, "body cut short", str(exc))
    except Exception as exc:  # an API bug answers 500 in JSON; the daemon keeps running
        if isinstance(exc, OSError) and request.app[STORE].fault:  # the disk under the store
            return _store_failing(request, exc)
        request.app.logger.exception("API handler failed")
        return json_error(500, "internal error", f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------------------------------------
# Typed input


class ClientGone(Exception):
    """The client closed the connection, or broke its chunked encoding, before its body ended."""


async def _read_body(request: web.Request) -> bytes:
    """At most MAX_BODY + 1 bytes of the body (then 413), within BODY_TIMEOUT (then 408)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            while size <= MAX_BODY:  # bounded: every turn reads at least one byte or ends
                chunk = await request.content.read(MAX_BODY + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except TimeoutError:
        raise InputError("body too slow", f"send the body within {BODY_TIMEOUT:g}s", status=408) from None
    except (web.RequestPayloadError, ConnectionError) as exc:
        raise ClientGone(f"the body ended after {size} bytes: {exc or type(exc).__name__}") from None
    return b"".join(chunks)


async def body_of(request: web.Request, model: type[M]) -> M:
    return parse_body(model, decode_json(await _read_body(request)))


def _query(request: web.Request, model: type[M]) -> M:
    return parse_query(model, request.query.items())


async def healthz(request: web.Request) -> web.Response:
    """The event loop answers. A failing state store is reported, not fatal (monitoring goes on)."""
    store = request.app[STORE]
    body: dict[str, Any] = {"status": "ok"}
    if store.fault:
        body["store"] = {"status": "failing", "error": store.fault, "since": store.fault_since}
    return json_response(body)


async def readyz(request: web.Request) -> web.Response:
    # a failing load balancer is said, but healerd is ready all the same: it monitors, and retries it
    faults = request.app[ENGINE].fleet.rotation_faults
    failing: dict[str, Any] = (
        {"rotations": {s: {"status": "failing", "error": e} for s, e in sorted(faults.items())}} if faults else {}
    )
    notifiers = request.app[ALERTING].receipts.failing_now()
    if notifiers:  # likewise a receiver that does not take the messages: they wait in the outbox
        failing["notifiers"] = notifiers
    if request.app[MONITOR].ready:
        return json_response({"status": "ready", **failing})
    pending = request.app[MONITOR].checks_without_result
    return json_response({"status": "starting", "checks_without_result": pending, **failing}, status=503)


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS].registry
    # Rendering a large fleet's exposition takes a while: keep it off the event loop.
    body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _service_view(request: web.Request, name: str) -> dict[str, Any]:
    """The service as the monitor sees it, and why healerd is not acting on it (held back, cooling down)."""
    monitor = request.app[MONITOR]
    return {
        **service_view(monitor.book, monitor.checks, name),
        **request.app[ENGINE].views.why_not_acting(name, time.time()),
    }


async def services(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    monitor = request.app[MONITOR]
    return json_response({"services": [_service_view(request, n) for n in sorted(monitor.book.services)]})


async def service(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    monitor = request.app[MONITOR]
    name = request.match_info["name"]
    if name not in monitor.book.services:
        return json_error(404, "unknown service", f"no service named {name!r}; see GET /api/v1/services")
    view = _service_view(request, name)
    view["machine_list"] = [
        machine_view(monitor.book, monitor.checks, monitor.machines, name, m)
        for m in sorted(monitor.book.services[name].machines)
    ]
    return json_response(view)


async def machines(request: web.Request) -> web.Response:
    query = _query(request, MachinesQuery)
    monitor = request.app[MONITOR]
    if query.service is not None and query.service not in monitor.book.services:
        return json_error(404, "unknown service", f"no service named {query.service!r}")
    out = []
    for name in sorted(monitor.book.services):
        if query.service is not None and name != query.service:
            continue
        for mid in sorted(monitor.book.services[name].machines):
            view = machine_view(monitor.book, monitor.checks, monitor.machines, name, mid)
            if query.condition is None or view["condition"] == query.condition:
                out.append(view)
    return json_response({"machines": out})


async def machine(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    monitor = request.app[MONITOR]
    service_name, mid = request.match_info["service"], request.match_info["machine"]
    if monitor.book.machine(service_name, mid) is None:
        return json_error(404, "unknown machine", f"no machine {mid!r} in service {service_name!r}")
    view = machine_view(monitor.book, monitor.checks, monitor.machines, service_name, mid)
    view["events"] = await request.app[STORE].events.recent(service=service_name, machine=mid, limit=50)
    return json_response(view)


async def events(request: web.Request) -> web.Response:
    query = _query(request, EventsQuery)
    types = list(query.type) if query.type else None
    rows = await request.app[STORE].events.recent(query.service, query.machine, query.limit, types)
    return json_response({"events": rows})


async def scheduler(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    monitor = request.app[MONITOR]
    return json_response({"checks": len(monitor.checks), **monitor.scheduler.stats.as_dict()})


async def incidents(request: web.Request) -> web.Response:
    query = _query(request, IncidentsQuery)
    engine = request.app[ENGINE]
    return json_response({"incidents": await engine.views.incident_list(state=query.state)})


async def incident(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    engine = request.app[ENGINE]
    view = await engine.views.incident_view(request.match_info["id"])
    if view is None:
        return json_error(
            404, "unknown incident", f"no incident {request.match_info['id']!r}; see GET /api/v1/incidents"
        )
    return json_response(view)


async def incident_resolve(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    body = await body_of(request, Resolve)
    engine = request.app[ENGINE]
    try:
        return json_response(await engine.resolve_by_hand(request.match_info["id"], by(request, body.by)))
    except LookupError as exc:
        return json_error(404, "unknown incident", str(exc))
    except RuntimeError as exc:
        return json_error(409, "cannot resolve now", str(exc))


async def incident_ack(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    body = await body_of(request, Acknowledge)
    try:
        who = by(request, body.by)
        return json_response(await request.app[ENGINE].acknowledge(request.match_info["id"], who, body.comment))
    except LookupError as exc:
        return json_error(404, "unknown incident", str(exc))


async def storm_clear(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    body = await body_of(request, Resolve)
    name = request.match_info["name"]
    if name not in request.app[SETTINGS].config.services:
        return json_error(404, "unknown service", f"no service named {name!r}; see GET /api/v1/services")
    return json_response(await request.app[ENGINE].clear_storm(name, by(request, body.by)))


async def quarantine(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    return json_response({"quarantined": await request.app[ENGINE].quarantines.listing()})


async def quarantine_release(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    body = await body_of(request, Release)
    quarantines = request.app[ENGINE].quarantines
    machine = request.match_info["machine"]
    try:
        return json_response(await quarantines.release(machine, body.to_rotation, body.timeout))
    except LookupError as exc:
        return json_error(404, "not quarantined", str(exc))
    except RuntimeError as exc:
        return json_error(409, "checks failed", str(exc))
    except ProviderError as exc:
        return _provider_refused(machine, "release", exc)


async def quarantine_terminate(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    await body_of(request, NoBody)
    machine = request.match_info["machine"]
    try:
        return json_response(await request.app[ENGINE].quarantines.terminate(machine))
    except LookupError as exc:
        return json_error(404, "not quarantined", str(exc))
    except ProviderError as exc:
        return _provider_refused(machine, "terminate", exc)


def _provider_refused(machine: str, what: str, exc: ProviderError) -> web.Response:
    """The machine's provider refused: nothing changed, and the operator learns why and what to do."""
    return json_error(
        409,
        "provider refused",
        f"the provider could not {what} {machine} ({exc}); it stays quarantined: fix the cause and try again",
    )


async def get_mode(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    return json_response(request.app[ENGINE].views.status())


async def set_mode(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    change = await body_of(request, ModeChange)
    settings = request.app[SETTINGS]
    engine = request.app[ENGINE]
    if change.service is not None and change.service not in settings.config.services:
        return json_error(404, "unknown service", f"no service named {change.service!r}; see GET /api/v1/services")
    unsaved: BaseException | None = None
    # the engine changes its state first, then saves it: a change the store cannot save still applies
    if change.changes_mode:
        try:
            await engine.controls.set_mode(change.mode, change.service)
        except _DATABASE_ERRORS as exc:
            unsaved = exc
    if change.changes_paused:
        try:
            await engine.controls.set_paused(change.paused)
        except _DATABASE_ERRORS as exc:
            unsaved = exc
    what = _change_words(change)
    who = by(request) or "an anonymous caller"
    now = time.time()
    engine.bus.publish(
        Event(EventType.MODE_CHANGED, change.service or "", f"{what} by {who}", now, details={"by": who, "what": what})
    )
    if unsaved is None:
        try:
            await engine.controls.record_change(what, who, now)
        except _DATABASE_ERRORS as exc:
            unsaved = exc
    if unsaved is not None:  # it applies: the answer says so (200), and that it is not saved
        status = engine.views.status()
        mode = status["service_modes"][change.service] if change.service else status["mode"]
        now = f"mode {mode}" + (f" for {change.service}" if change.service else "") + (", paused" * status["paused"])
        store = request.app[STORE]
        warning = (
            f"the change applies now ({now}) but the state store {store.where} is failing "
            f"({(store.fault or str(unsaved))[:300]}), so it is not saved: a restart would return to the saved "
            f"mode. Send it again once the store works. {store.remedy}"
        )
        return json_response({**status, "saved": False, "warning": warning})
    return json_response({**engine.views.status(), "saved": True})


def _change_words(change: ModeChange) -> str:
    parts = []
    if change.changes_mode:
        parts.append(f"mode {change.mode or 'config'}" + (f" for {change.service}" if change.service else ""))
    if change.changes_paused:
        parts.append("remediation paused" if change.paused else "remediation resumed")
    return ", ".join(parts)


async def silences(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    return json_response({"silences": await request.app[ENGINE].controls.silences()})


async def add_silence(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    body = await body_of(request, SilenceCreate)
    refused = _silence_target_refused(request.app[MONITOR], body)
    if refused is not None:
        return refused
    silence = await request.app[ENGINE].controls.add_silence(
        body.service, body.machine, body.duration, body.comment, by(request, body.created_by)
    )
    if not silence["saved"]:  # it applies now; 202: the store will have it once it can write again
        store = request.app[STORE]
        silence["warning"] = (
            f"the silence applies now, but the state store {store.where} is failing ({(store.fault or '')[:300]}): "
            "it is kept in memory and saved as soon as the store works again (a restart before that loses it). "
            f"{store.remedy}"
        )
        return json_response(silence, status=202)
    return json_response(silence, status=201)


#: known names a refusal lists, at most
_NAMES_SHOWN = 20


def _names(kind: str, names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    if not names:
        return f"no {kind} known"
    return f"known {kind} ({len(names)}{f', the first {_NAMES_SHOWN}' if len(names) > _NAMES_SHOWN else ''}): {shown}"


def _silence_target_refused(monitor: Monitor, body: SilenceCreate) -> web.Response | None:
    """404 naming the known ones when a silence names a service or machine that does not exist: a typo would
    silence nothing and tell nobody. A machine not launched yet is silenced with `force`."""
    services = monitor.book.services
    if body.service is not None and body.service not in services:
        return json_error(
            404, "unknown service", f"no service named {body.service!r}; {_names('services', sorted(services))}"
        )
    if body.machine is None or body.force:
        return None
    scope = [body.service] if body.service is not None else sorted(services)
    if any(body.machine in services[name].machines for name in scope):
        return None
    where = f" in service {body.service}" if body.service is not None else ""
    known = sorted(m for name in scope for m in services[name].machines)
    return json_error(
        404,
        "unknown machine",
        f"no machine {body.machine!r}{where}; {_names('machines', known)}; to silence a machine not launched yet, "
        'send "force": true (healerd silence add --force)',
    )


async def delete_silence(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    await body_of(request, NoBody)
    if not await request.app[ENGINE].controls.delete_silence(request.match_info["id"]):
        return json_error(404, "unknown silence", f"no silence {request.match_info['id']!r}; see GET /api/v1/silences")
    return json_response({"deleted": request.match_info["id"]})


async def notifications(request: web.Request) -> web.Response:
    query = _query(request, NotificationsQuery)
    alerting = request.app[ALERTING]
    return json_response(await outbox_view(alerting.store, alerting.notifiers, alerting.receipts, query.limit))


def add_routes(app: web.Application) -> None:
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
    app.router.add_post("/api/v1/incidents/{id}/ack", incident_ack)
    app.router.add_post("/api/v1/services/{name}/storm/clear", storm_clear)
    app.router.add_get("/api/v1/quarantine", quarantine)
    app.router.add_post("/api/v1/quarantine/{machine}/release", quarantine_release)
    app.router.add_post("/api/v1/quarantine/{machine}/terminate", quarantine_terminate)
    app.router.add_get("/api/v1/mode", get_mode)
    app.router.add_post("/api/v1/mode", set_mode)
    app.router.add_get("/api/v1/silences", silences)
    app.router.add_post("/api/v1/silences", add_silence)
    app.router.add_delete("/api/v1/silences/{id}", delete_silence)
    app.router.add_get("/api/v1/notifications", notifications)
