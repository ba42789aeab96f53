"""The monitor's state as the API, the status page and the CLI show it: services, machines and their checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .health import Condition

if TYPE_CHECKING:
    from .health import CheckKey, HealthBook
    from .machines import Machine
    from .runner import BoundCheck


def service_view(book: HealthBook, checks: dict[CheckKey, BoundCheck], name: str) -> dict[str, Any]:
    svc = book.services[name]
    return {
        "name": name,
        "state": svc.state.value,
        "reason": svc.reason,
        "since": svc.since,
        "desired": svc.desired,
        "min_healthy": svc.min_healthy,
        "machines": svc.counts() | {"total": len(svc.machines)},
        "service_checks": {k: check_view(checks, c) for k, c in svc.service_checks.items()},
    }


def machine_view(
    book: HealthBook,
    checks: dict[CheckKey, BoundCheck],
    machines: dict[str, dict[str, Machine]],
    service: str,
    machine_id: str,
) -> dict[str, Any]:
    m = book.services[service].machines[machine_id]
    machine = machines.get(service, {}).get(machine_id)
    return {
        "service": service,
        "id": machine_id,
        "address": machine.address if machine else "",
        "zone": machine.zone if machine else "",
        "version": machine.image_version if machine else None,
        "launch_error": machine.launch_error if machine else None,
        "lifecycle": m.lifecycle.value,
        "condition": m.condition.value,
        "up": m.condition is not Condition.DOWN,
        "flapping": m.condition is Condition.FLAPPING,
        "since": m.since,
        "checks": {k: check_view(checks, c) for k, c in m.checks.items()},
    }


def check_view(checks: dict[CheckKey, BoundCheck], c: Any) -> dict[str, Any]:
    last = c.last
    bc = checks.get(c.key)
    return {
        "status": last.status.name if last else None,
        "message": last.message if last else None,
        "duration": round(last.duration, 6) if last else None,
        "metrics": [m.as_dict() for m in last.metrics] if last else [],
        "last_run": c.last_at,
        "hard_state": c.hard.name,
        "state_type": c.state_type,
        "since": c.since,
        "ok_streak": c.ok_streak,
        "fail_streak": c.bad_streak,
        "flapping": c.flapping,
        "flap_percent": round(c.flap_pct, 1),
        "interval": bc.spec.interval if bc else None,
    }
