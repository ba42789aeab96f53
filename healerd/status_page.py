"""What the on-call status page shows (docs/status-page.md), gathered for its template: per service its state and since
when, uptime over 1 h / 24 h / 7 d, a bar of the last hour and a latency sparkline per check; the problems
first (open incidents with their age, current step and why nothing is happening), quarantined machines,
silences, the event feed; healthy machines folded and capped, so a fleet of 10,000 stays one quick page.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .cluster import views as cluster_views
from .durations import format_age
from .health import Condition, ServiceState
from .history import MACHINE_WIDTH, SERVICE_WIDTH
from .machines import Lifecycle
from .monitor_views import service_view
from .remediation.incidents import IncidentState
from .remediation.ladder import RUNG_STEPS
from .store import STORE_FAULTS

if TYPE_CHECKING:
    from .cluster import Cluster
    from .monitor import Monitor
    from .remediation.engine import RemediationEngine
    from .remediation.incidents import Incident
    from .store import BaseStore

#: healthy machines listed per service (the others are counted, and the API lists them all)
HEALTHY_SHOWN = 50
#: machines with a problem listed per service, worst first (a mass outage stays one quick page)
PROBLEMS_SHOWN = 100
#: incidents and quarantined machines listed (newest first), and machines named per held-back reason
ROWS_SHOWN = 100
NAMED = 5
#: buckets in the history bar (one-minute buckets: the last hour) and in a machine's sparkline (5-minute: 3 h)
BAR_BUCKETS = 60
MACHINE_POINTS = 36
EVENTS_SHOWN = 30
#: the uptime spans shown, in seconds
SPANS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
ICONS = {"optimal": "✔", "degraded": "▲", "down": "✖", "up": "✔", "impaired": "▲", "flapping": "↯", "pending": "○"}

#: why a remediation is not happening, in words an on-call engineer acts on; the gate's own detail follows in
#: parentheses (its figures and what healerd does meanwhile), so these do not say it again
HELD: dict[str, str] = {
    "max_unhealthy": "held back: too much of the service fails at once (max_unhealthy); look at the service by hand",
    "storm_cooldown": "held back: cooling down after a storm (max_unhealthy) before remediating again",
    "unconfirmed": "held back: the other vantage points do not see it down (unconfirmed); asked again shortly",
    "silenced": "silenced: a maintenance window covers it; nothing is remediated",
    "paused": "healerd is paused: nothing is remediated (healerd mode resume)",
    "observe": "mode observe: healerd alerts only",
    "dry_run": "mode dry-run: healerd only logs what it would do",
    "flapping": "held back: the machine is flapping; it is reported, not churned",
    "max_concurrent": "waiting: another remediation of the service is running (max_concurrent)",
    "max_per_hour": "held back: the hourly replacement budget is spent (max_per_hour)",
    "backoff": "waiting: backing off after a failed remediation of this machine",
    "retry_limit": "a human is needed: the retry limit is reached, healerd will not try again",
    "static": "alert only: this service's machines are not healerd's to replace",
    "dependency_down": "held back: a service it depends on is down (dependency_down)",
    "monitor_suspect": "held back: every zone fails at once; healerd's own network is suspect (monitor_suspect)",
}
#: reasons that need a human now (highlighted as such)
NEEDS_HUMAN = {"retry_limit", "max_unhealthy", "monitor_suspect"}


def sparkline(values: list[float | None], width: int = 120, height: int = 20) -> str:
    """SVG polyline points of the values (None: no data), scaled to the box; '' when nothing to draw."""
    known = [v for v in values if v is not None]
    if not known or len(values) < 2:
        return ""
    top = max(known) or 1.0
    step = width / (len(values) - 1)
    return " ".join(
        f"{i * step:.1f},{height - 1 - (v / top) * (height - 2):.1f}" for i, v in enumerate(values) if v is not None
    )


def level(b: dict[str, Any] | None) -> str:
    """A history bar cell: ok, warn (some results not OK), bad (most not OK, or the service down), none."""
    if b is None:
        return "none"
    runs = b.get("runs") or 0
    if b.get("down_s"):
        return "bad"
    if not runs:
        return "ok" if b.get("up_s") else "none"
    bad = (b.get("critical") or 0) + (b.get("warning") or 0)
    return "ok" if bad == 0 else "bad" if bad * 2 >= runs else "warn"


def uptime(buckets: list[dict[str, Any]], since: float) -> float | None:
    """The share of time up among the buckets since then (service rows), or None without data."""
    up = sum(b["up_s"] for b in buckets if b["bucket"] >= since)
    down = sum(b["down_s"] for b in buckets if b["bucket"] >= since)
    return None if up + down <= 0 else up / (up + down)


def result_uptime(buckets: list[dict[str, Any]], since: float) -> float | None:
    """The share of OK results among the buckets since then (check rows), or None without data."""
    runs = sum(b["runs"] for b in buckets if b["bucket"] >= since)
    ok = sum(b["ok"] for b in buckets if b["bucket"] >= since)
    return None if runs == 0 else ok / runs


def _avg(b: dict[str, Any] | None) -> float | None:
    """A bucket's mean check duration."""
    return b["dur_sum"] / b["runs"] if b and b["runs"] else None


def _recent(rollout: dict[str, Any] | None, now: float) -> dict[str, Any] | None:
    """A rollout running, or ended within the hour."""
    if rollout is None or not (rollout["active"] or now - (rollout["ended_at"] or 0) < 3600):
        return None
    return rollout


def series(buckets: list[dict[str, Any]], start: float, width: int, count: int) -> list[dict[str, Any] | None]:
    by_start = {b["bucket"]: b for b in buckets}
    return [by_start.get(start + i * width) for i in range(count)]


@dataclass
class PageInput:
    monitor: Monitor
    engine: RemediationEngine
    store: BaseStore
    cluster: Cluster | None
    #: notifiers whose receiver fails now (Receipts.failing_now)
    notifiers_failing: dict[str, dict[str, Any]] = field(default_factory=dict)
    now: float = field(default_factory=time.time)


def _machine_entry(monitor: Monitor, service: str, mid: str, now: float) -> dict[str, Any]:
    mh = monitor.book.services[service].machines[mid]
    m = monitor.machines.get(service, {}).get(mid)
    return {
        "id": mid,
        "address": m.address if m else "",
        "zone": m.zone if m else "",
        "version": m.image_version if m else None,
        "lifecycle": mh.lifecycle.value,
        "condition": mh.condition.value,
        "icon": ICONS.get(mh.condition.value, "?"),
        "since": format_age(now - mh.since) if mh.since else "-",
        "problem": mh.problem(),
        "checks": [
            {
                "name": c.key.check,
                "hard": c.hard.name,
                "last": c.last.status.name if c.last else "-",
                "soft": c.last is not None and c.last.status is not c.hard,
                "message": c.last.message if c.last else "",
            }
            for c in mh.checks.values()
        ],
    }


T = TypeVar("T")


async def _safe(read: Awaitable[T], otherwise: T) -> T:
    """A read of the store for the page; when the store fails (the page says so at the top), what it would have
    shown is left out and the rest of the page is served."""
    try:
        return await read
    except STORE_FAULTS:
        return otherwise


_SEVERITY = {Condition.DOWN: 0, Condition.FLAPPING: 1, Condition.IMPAIRED: 2}


def _held(incidents: Iterable[Incident]) -> list[dict[str, Any]]:
    """The service's incidents held back or escalated, one line per reason: how many, which (a few named)."""
    groups: dict[str, dict[str, Any]] = {}
    for inc in incidents:
        if not inc.details.get("suppressed") and inc.state is not IncidentState.FAILED:
            continue
        words, human = held_words(inc)
        key = words if len(groups) < ROWS_SHOWN else "…"
        held = inc.held or {}
        g = groups.setdefault(
            key,
            {
                "words": words,
                "human": human,
                "machines": [],
                "incident": inc.id,
                "count": 0,
                "what_to_do": held.get("what_to_do", ""),
            },
        )
        g["count"] += 1
        if len(g["machines"]) < NAMED:
            g["machines"].append(inc.machine)
    return sorted(groups.values(), key=lambda g: (not g["human"], -g["count"]))


def _acknowledged(inc: Incident, now: float) -> str:
    """'acknowledged by alice 4m ago: on it' ('' while nobody has)."""
    ack = inc.acknowledged
    if ack is None:
        return ""
    said = f": {ack['comment']}" if ack["comment"] else ""
    return f"acknowledged by {ack['by'] or 'someone'} {format_age(now - ack['at'])} ago{said}"


def step_words(inc: Incident, step: dict[str, Any] | None) -> str:
    """The step a remediation is at; on a ladder, with its rung and playbook."""
    if step is None:
        return ""
    rung, index = divmod(step["index"], RUNG_STEPS)
    where = f"rung {rung + 1} ({inc.playbook}), " if inc.ladder and (rung or inc.ladder["tried"]) else ""
    return f"{where}step {index + 1}: {step['action']} ({step['state']})"


def held_words(inc: Incident) -> tuple[str, bool]:
    """What is (not) happening to the incident, and whether a human is needed."""
    if inc.state is IncidentState.FAILED:
        return f"remediation failed — a human is needed: {inc.error or ''}".rstrip(": "), True
    reason = str(inc.details.get("suppressed") or "")
    if not reason:
        if inc.state is IncidentState.REMEDIATING:
            return "remediating", False
        if inc.state is IncidentState.REMEDIATED:
            return "remediated: waiting for the service to be optimal again", False
        return "open", False
    words = HELD.get(reason, f"held back: {reason}")
    detail = str(inc.details.get("suppressed_detail") or "")
    return (f"{words} ({detail})" if detail else words), reason in NEEDS_HUMAN


async def page_model(p: PageInput, healthy_shown: int = HEALTHY_SHOWN) -> dict[str, Any]:
    monitor, engine, store, now = p.monitor, p.engine, p.store, p.now
    hour_ago = now - 3600
    bar_start = (now // SERVICE_WIDTH) * SERVICE_WIDTH - (BAR_BUCKETS - 1) * SERVICE_WIDTH
    silences = [
        {
            **s,
            "until": time.strftime("%Y-%m-%d %H:%M", time.localtime(s["ends_at"])),
            "left": format_age(s["ends_at"] - now),
        }
        for s in await _safe(engine.controls.silences(now), [])
    ]
    incidents = sorted(engine.book.active.values(), key=lambda i: i.opened_at)
    steps: dict[str, dict[str, Any]] = {}
    for inc in incidents:
        if inc.state is IncidentState.REMEDIATING:
            journal = await _safe(engine.journal.steps(inc.id), {})
            if journal:
                steps[inc.id] = journal[max(journal)]
    await store.history.refresh()  # once: every read below sees what was counted until now
    services = []
    for name in sorted(monitor.book.services):
        svc = monitor.book.services[name]
        view = service_view(monitor.book, monitor.checks, name)
        availability = await _safe(store.history.buckets(name, "", "", now - 7 * 86400, fresh=False), [])
        checks: list[dict[str, Any]] = []
        for check in await _safe(store.history.checks(name, hour_ago), []):
            rows = await _safe(store.history.buckets(name, "", check, bar_start, fresh=False), [])
            cells = series(rows, bar_start, SERVICE_WIDTH, BAR_BUCKETS)
            latencies = [_avg(c) for c in cells]
            known = [x for x in latencies if x is not None]
            checks.append(
                {
                    "name": check,
                    "points": sparkline(latencies),
                    "last_ms": round(known[-1] * 1000, 1) if known else None,
                    "max_ms": round(max(known) * 1000, 1) if known else None,
                    "uptime_1h": result_uptime(rows, hour_ago),
                }
            )
        state_cells = series(availability, bar_start, SERVICE_WIDTH, BAR_BUCKETS)
        first_check: str | None = checks[0]["name"] if checks else None
        check_cells = (
            series(
                await _safe(store.history.buckets(name, "", first_check, bar_start, fresh=False), []),
                bar_start,
                SERVICE_WIDTH,
                BAR_BUCKETS,
            )
            if first_check
            else [None] * BAR_BUCKETS
        )
        bar = []
        for i in range(BAR_BUCKETS):
            cell = {
                **(check_cells[i] or {}),
                **{k: v for k, v in (state_cells[i] or {}).items() if k in ("up_s", "down_s")},
            }
            start = bar_start + i * SERVICE_WIDTH
            lvl = level(cell or None)
            runs = cell.get("runs", 0)
            title = (
                time.strftime("%H:%M", time.localtime(start))
                + (f": {cell.get('ok', 0)}/{runs} OK" if runs else ": no results")
                + (f", down {cell['down_s']:.0f}s" if cell.get("down_s") else "")
            )
            bar.append({"level": lvl, "title": title})
        problems: list[str] = []
        healthy: list[str] = []
        for mid in sorted(svc.machines):
            mh = svc.machines[mid]
            up = mh.condition is Condition.UP and mh.lifecycle is Lifecycle.IN_SERVICE
            (healthy if up else problems).append(mid)
        problems.sort(key=lambda mid: _SEVERITY.get(svc.machines[mid].condition, 9))  # down first
        listed = problems[:PROBLEMS_SHOWN]
        shown = [_machine_entry(monitor, name, mid, now) for mid in listed + healthy[:healthy_shown]]
        start = (now // MACHINE_WIDTH) * MACHINE_WIDTH - (MACHINE_POINTS - 1) * MACHINE_WIDTH
        history = await _safe(store.history.machines(name, [e["id"] for e in shown], start), {})
        for entry in shown:
            first = entry["checks"][0]["name"] if entry["checks"] else None
            rows = [r for r in history.get(entry["id"], []) if r["check"] == first]
            entry["points"] = sparkline([_avg(c) for c in series(rows, start, MACHINE_WIDTH, MACHINE_POINTS)], 90, 16)
        rollout = await _safe(engine.rollouts.view(name), None)
        held = _held(i for i in incidents if i.service == name)
        storm = engine.views.why_not_acting(name, now)["storm_cooldown"]
        services.append(
            {
                "name": name,
                "state": view["state"],
                "icon": ICONS.get(view["state"], "?"),
                "reason": view["reason"],
                "since": format_age(now - svc.since) if svc.since else "-",
                "since_ts": svc.since,
                "counts": view["machines"],
                "desired": view["desired"],
                "uptime": {span: uptime(availability, now - seconds) for span, seconds in SPANS.items()},
                "bar": bar,
                "checks": checks,
                "problems": shown[: len(listed)],
                "problems_total": len(problems),
                "problems_hidden": len(problems) - len(listed),
                "healthy": shown[len(listed) :],
                "healthy_total": len(healthy),
                "healthy_hidden": max(0, len(healthy) - healthy_shown),
                "held": held,
                "storm": {**storm, "left": format_age(storm["seconds_left"])} if storm else None,
                "rollout": _recent(rollout, now),
                "silenced": [s for s in silences if s.get("service") in (None, name)],
                "down": svc.state is ServiceState.DOWN,
            }
        )
    incident_rows = []
    for inc in list(reversed(incidents))[:ROWS_SHOWN]:
        words, human = held_words(inc)
        step = steps.get(inc.id)
        incident_rows.append(
            {
                "id": inc.id,
                "service": inc.service,
                "machine": inc.machine,
                "state": inc.state.value,
                "age": format_age(now - inc.opened_at),
                "summary": inc.summary,
                "step": step_words(inc, step),
                "words": words,
                "human": human,
                "acknowledged": _acknowledged(inc, now),
            }
        )
    quarantined = sorted(await _safe(engine.quarantines.listing(), []), key=lambda q: -q["quarantined_at"])
    for q in quarantined:
        q["age"] = format_age(now - q["quarantined_at"]) if q["quarantined_at"] else "-"
    events = await _safe(store.events.recent(limit=EVENTS_SHOWN), [])
    for e in events:
        e["age"] = format_age(now - e["timestamp"])
    status = engine.views.status()
    return {
        "now": now,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)),
        "mode": status["mode"],
        "paused": status["paused"],
        "changed": {**status["changed"], "age": format_age(now - status["changed"]["at"])}
        if status["changed"]
        else None,
        "cluster": cluster_views.line(p.cluster) if p.cluster is not None else None,
        "store_fault": store.fault,
        "store_remedy": store.remedy if store.fault else "",
        "rotation_faults": dict(sorted(engine.fleet.rotation_faults.items())),
        "notifiers_failing": {
            name: {**f, "for": format_age(now - f.get("failing_since", now))} for name, f in p.notifiers_failing.items()
        },
        "services": services,
        "incidents": incident_rows,
        "quarantined": quarantined[:ROWS_SHOWN],
        "quarantined_total": len(quarantined),
        "incidents_total": len(incidents),
        "silences": silences,
        "events": events,
        "needs_human": any(r["human"] for r in incident_rows),
    }
