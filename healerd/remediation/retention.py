"""Quarantine retention: quarantined machines older than `keep_for` end (terminated, their evidence kept), with
a warning `keep_warning` before. `retention_plan` decides, purely; `RetentionReconciler` acts on it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from structlog.contextvars import bound_contextvars

from ..machines import Lifecycle, Machine
from ..providers.base import ProviderError

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..monitor import Monitor
    from .quarantine import Quarantine

log = structlog.get_logger("healerd.remediation")

NEVER = float("inf")


@dataclass(frozen=True)
class RetentionPlan:
    """What retention does at `now`: machines to terminate, machines to warn about (with when their quarantine
    ends), and when to look again."""

    terminate: tuple[Machine, ...] = ()
    warn: tuple[tuple[Machine, float], ...] = ()
    next_at: float = NEVER


def retention_plan(machines: Iterable[Machine], keep: float, warning: float, now: float) -> RetentionPlan:
    """Quarantined machines older than `keep` end; those within `warning` of it are warned about once."""
    terminate: list[Machine] = []
    warn: list[tuple[Machine, float]] = []
    next_at = NEVER
    for m in machines:
        if m.lifecycle is not Lifecycle.QUARANTINED:
            continue
        since = m.quarantined_at
        ends = (now if since is None else since) + keep
        if now >= ends:
            terminate.append(m)
            continue
        if now >= ends - warning and not m.retention_warned:
            warn.append((m, ends))
        warned = now >= ends - warning or m.retention_warned
        next_at = min(next_at, ends if warned else ends - warning)
    return RetentionPlan(tuple(terminate), tuple(warn), next_at)


#: seconds between attempts to terminate a quarantine past keep_for that the provider refused
TERMINATE_RETRY = 60.0


class RetentionReconciler:
    """Quarantines older than keep_for end: a warning first (keep_warning before), then termination."""

    def __init__(self, monitor: Monitor, quarantine: Quarantine) -> None:
        self.monitor = monitor
        self.quarantine = quarantine
        #: machine -> the provider's last refusal to terminate it, and when to try again
        self._refused: dict[str, tuple[str, float]] = {}

    async def reconcile(self, service: ServiceConfig, now: float) -> float:
        keep = service.remediation.keep_for
        if not service.managed or keep is None:
            return NEVER
        machines = list(self.monitor.machines.get(service.name, {}).values())
        plan = retention_plan(machines, keep, service.remediation.keep_warning, now)
        with bound_contextvars(service=service.name):
            next_at = plan.next_at
            for m in plan.terminate:
                with bound_contextvars(machine=m.id, incident=m.incident):
                    why = f"terminated: its quarantine reached keep_for ({keep:g}s); evidence and snapshots are kept"
                    refused, retry_at = self._refused.get(m.id, ("", 0.0))
                    if now < retry_at:
                        next_at = min(next_at, retry_at)
                        continue
                    try:
                        await self.quarantine.terminate(m.id, why)
                    except ProviderError as exc:  # kept quarantined and tried again later; said once per error
                        if str(exc) != refused:
                            log.error("quarantine retention ended; the provider refused to terminate", error=str(exc))
                        self._refused[m.id] = (str(exc), now + TERMINATE_RETRY)
                        next_at = min(next_at, now + TERMINATE_RETRY)
                        continue
                    self._refused.pop(m.id, None)
                    log.warning("quarantine retention ended; machine terminated")
            for m, ends in plan.warn:
                with bound_contextvars(machine=m.id, incident=m.incident):
                    await self._warn(m, ends, now)
        return next_at

    async def _warn(self, m: Machine, ends: float, now: float) -> None:
        await self.monitor.put_machine(
            Machine(m.service, m.id, m.address, m.lifecycle, {**m.attributes, "retention_warned": str(now)})
        )
        self.quarantine.event(
            m,
            f"{m.id} will be terminated in {ends - now:.0f}s (quarantine keep_for); release it or copy what you need",
            now,
            True,
            {"retention": "expiring", "terminate_at": ends},
        )
        log.warning("quarantine retention ending soon", seconds_left=round(ends - now))
