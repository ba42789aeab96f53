"""Image promotion's part of the API (docs/rollouts.md): the images and their versions, a service's rollout, and the
changes to it (start, pause, resume, abort), which need the API token and go to the cluster's leader."""

from __future__ import annotations

from aiohttp import web

from .api import ENGINE, _query, body_of, json_error, json_response
from .api_access import by
from .api_models import NoQuery, RolloutChange, RolloutStart
from .rollouts import RolloutRefused
from .rollouts.views import images_view


def _refused(exc: RolloutRefused) -> web.Response:
    return json_error(exc.status, str(exc), exc.detail)


async def images(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    return json_response(await images_view(request.app[ENGINE].config, request.app[ENGINE].store))


async def rollout(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    name = request.match_info["name"]
    engine = request.app[ENGINE]
    if name not in engine.config.services:
        return json_error(404, "unknown service", f"no service named {name!r}; see GET /api/v1/services")
    view = await engine.rollouts.view(name)
    if view is None:
        return json_error(
            404, "no rollout", f"{name} has had no rollout; start one with healerd images promote {name} VERSION"
        )
    return json_response(view)


async def rollout_start(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    body = await body_of(request, RolloutStart)
    try:
        view = await request.app[ENGINE].rollouts.begin(
            request.match_info["name"], body.version, body.canary, body.bake, by(request, body.by)
        )
    except RolloutRefused as exc:
        return _refused(exc)
    return json_response(view, status=202)


async def rollout_change(request: web.Request) -> web.Response:
    _query(request, NoQuery)
    body = await body_of(request, RolloutChange)
    rollouts = request.app[ENGINE].rollouts
    name, verb = request.match_info["name"], request.match_info["verb"]
    try:
        if verb == "abort":
            return json_response(await rollouts.abort(name, by(request, body.by)))
        return json_response(await rollouts.set_paused(name, verb == "pause", by(request, body.by)))
    except RolloutRefused as exc:
        return _refused(exc)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/images", images)
    app.router.add_get("/api/v1/services/{name}/rollout", rollout)
    app.router.add_post("/api/v1/services/{name}/rollout", rollout_start)
    app.router.add_post("/api/v1/services/{name}/rollout/{verb:pause|resume|abort}", rollout_change)
