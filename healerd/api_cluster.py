"""The cluster's part of the API (docs/cluster.md): its view from any node, the probe the leader asks vantage
points to run, and the rule that changes go to the leader (a follower answers 409 naming it)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .api import SETTINGS, Handler, body_of, json_error, json_response
from .api_access import SAFE_METHODS
from .api_models import Probe
from .cluster import Cluster, probe
from .cluster import views as cluster_views

PROBE_PATH = "/api/v1/cluster/probe"


def _cluster(request: web.Request) -> Cluster | None:
    return request.app[SETTINGS].cluster


@web.middleware
async def leader_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A change sent to a follower is refused with the leader's address: only the leader acts."""
    cluster = _cluster(request)
    if (
        cluster is None
        or request.method in SAFE_METHODS
        or request.path == PROBE_PATH
        or not request.path.startswith("/api/")
        or cluster.leads()
    ):
        return await handler(request)
    if cluster.acting():  # it holds the lease, and its takeover is still being tried
        return json_error(
            503,
            "taking over",
            f"this node ({cluster.node}) holds the cluster's lease and is still taking over "
            f"({cluster.takeover_error() or 'starting'}); retry in a few seconds",
        )
    view = cluster_views.view(cluster)
    leader = next((n for n in view["nodes"] if n["leader"]), None)
    where = f"{leader['node']} at {leader['advertise']}" if leader else "(none right now: a takeover is under way)"
    return json_error(
        409,
        "not the leader",
        f"this node ({cluster.node}) does not lead the cluster; send changes to the leader {where} "
        "(healerd cluster status shows it)",
    )


async def cluster_view(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    if cluster is None:
        return json_error(
            404,
            "not clustered",
            "this healerd runs alone (SQLite); add a cluster: section to run several (docs/cluster.md)",
        )
    return json_response(cluster_views.view(cluster))


async def cluster_probe(request: web.Request) -> web.Response:
    cluster = _cluster(request)
    if cluster is None:
        return json_error(404, "not clustered", "this healerd runs alone; there is nothing to confirm from here")
    body = await body_of(request, Probe)
    if body.machines:
        answers = await asyncio.gather(*(probe(cluster.monitor, body.service, m) for m in body.machines))
        seen = dict(zip(body.machines, answers, strict=True))
        return json_response({"node": cluster.node, "zone": cluster.zone, "machines": seen})
    answer = await probe(cluster.monitor, body.service, body.machine)
    return json_response({"node": cluster.node, **answer})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/cluster", cluster_view)
    app.router.add_post(PROBE_PATH, cluster_probe)
