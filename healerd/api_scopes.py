"""What each endpoint of the API needs: its scope (docs/security.md shows this table; a test walks every route
against it). `None`: open to anyone who reaches the daemon (probes of its health)."""

from __future__ import annotations

from .access import Scope

READ, OPERATE, ADMIN = Scope.READ, Scope.OPERATE, Scope.ADMIN

#: (method, route) -> the scope it needs; every route the API serves is here
SCOPES: dict[tuple[str, str], Scope | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/"): READ,  # the status page: open when daemon.status_page is public
    ("GET", "/metrics"): READ,
    ("GET", "/api/v1/services"): READ,
    ("GET", "/api/v1/services/{name}"): READ,
    ("GET", "/api/v1/machines"): READ,
    ("GET", "/api/v1/machines/{service}/{machine}"): READ,
    ("GET", "/api/v1/events"): READ,
    ("GET", "/api/v1/scheduler"): READ,
    ("GET", "/api/v1/incidents"): READ,
    ("GET", "/api/v1/incidents/{id}"): READ,
    ("GET", "/api/v1/incidents/{id}/bundle"): OPERATE,  # forensics: a machine's console and logs
    ("GET", "/api/v1/quarantine"): READ,
    ("GET", "/api/v1/mode"): READ,
    ("GET", "/api/v1/silences"): READ,
    ("GET", "/api/v1/notifications"): READ,
    ("GET", "/api/v1/history"): READ,
    ("GET", "/api/v1/images"): READ,
    ("GET", "/api/v1/services/{name}/rollout"): READ,
    ("GET", "/api/v1/cluster"): READ,
    ("POST", "/api/v1/incidents/{id}/resolve"): OPERATE,
    ("POST", "/api/v1/incidents/{id}/ack"): OPERATE,
    ("POST", "/api/v1/services/{name}/storm/clear"): OPERATE,
    ("POST", "/api/v1/quarantine/{machine}/release"): OPERATE,
    ("POST", "/api/v1/quarantine/{machine}/terminate"): ADMIN,
    ("POST", "/api/v1/mode"): OPERATE,
    ("POST", "/api/v1/silences"): OPERATE,
    ("DELETE", "/api/v1/silences/{id}"): OPERATE,
    ("POST", "/api/v1/services/{name}/rollout"): ADMIN,  # a new version on the fleet: healerd images promote
    # as aiohttp names the route (its canonical form drops the pattern, pause|resume|abort)
    ("POST", "/api/v1/services/{name}/rollout/{verb}"): OPERATE,
    ("POST", "/api/v1/alerts"): Scope.ALERTS,
    ("POST", "/api/v1/cluster/probe"): Scope.CLUSTER,
}
#: the scope of a route the table does not name (a 404, a 405): what a change needs at least, so that probing
#: paths tells an anonymous caller nothing
UNLISTED: dict[str, Scope] = {"GET": READ, "HEAD": READ}


def needed(method: str, route: str) -> Scope | None:
    """The scope a request needs (HEAD as GET)."""
    method = "GET" if method == "HEAD" else method
    if (method, route) in SCOPES:
        return SCOPES[(method, route)]
    return UNLISTED.get(method, ADMIN)
