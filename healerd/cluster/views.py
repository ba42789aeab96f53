"""The cluster as the API, the status page and the CLI show it, from the last round."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .node import Cluster


def line(c: Cluster) -> str:
    """One line for the status page and systemd's STATUS=."""
    found = c.last
    live = c.live()
    leader = found.leader if found and found.expires_in > 0 else None
    text = (
        f"cluster: {len(live)} live node(s) ({', '.join(sorted(m.node for m in live))}), "
        f"leader {leader or 'none (takeover under way)'} at epoch {found.epoch if found else 0}; "
        f"this node {c.node} {_role(c)} and checks "
        f"{c.monitor.owned_machines()} machine(s)"
    )
    need, capped = c.confirmer.effective()
    text += f"; confirm_from {need}" + (f" ({capped})" if capped else "")
    if c.disputed:
        text += (
            f"; THIS NODE IS THE ODD ONE OUT: {c.disputed} machine(s) it sees down are up from the other "
            "nodes (its own network or checks are more likely at fault)"
        )
    if c.last_error:
        text += f"; DATABASE UNREACHABLE: {c.last_error}"
    return text


def _role(c: Cluster) -> str:
    if c.leads():
        return "leads"
    if c.acting():
        error = c.takeover_error()
        return "is taking over" + (f" (retrying: {error})" if error else "")
    return "follows"


def view(c: Cluster) -> dict[str, Any]:
    """GET /api/v1/cluster (docs/cluster.md), from the last round."""
    found = c.last
    need, capped = c.confirmer.effective()
    now = time.time()
    nodes = []
    for m in found.members if found else ():
        if m.age > 10 * c.ttl and m.node != c.node:
            continue
        nodes.append(
            {
                "node": m.node,
                "advertise": m.advertise,
                "last_seen": m.last_seen,
                "seen_ago": round(m.age, 3),
                "live": m.age < c.ttl,
                "leader": c.leads()
                if m.node == c.node
                else found is not None and m.node == found.leader and found.expires_in > 0,
                "machines": c.monitor.owned_machines() if m.node == c.node else m.machines,
                "checks": c.owned_checks() if m.node == c.node else m.checks,
                "disputed": m.disputed,
                "version": m.version,
                "started_at": m.started_at,
            }
        )
    leader = found.leader if found and found.expires_in > 0 else None
    return {
        "leader": leader,
        "epoch": found.epoch if found else 0,
        "lease_expires_in": round(found.expires_in, 3) if found and leader else None,
        "lease_ttl": c.ttl,
        "node": c.node,
        "this_node_leads": c.leads(),
        "taking_over": c.acting() and not c.leads(),
        "takeover_error": c.takeover_error(),
        "confirm_from": {"configured": c.config.confirm_from, "effective": need, "note": capped},
        "nodes": nodes,
        "database": c.store.where,
        "database_error": c.last_error,
        "mirror_lag": round(c.mirror.lag, 3),
        "as_of": now,
    }
