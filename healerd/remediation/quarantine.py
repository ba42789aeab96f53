"""Quarantined machines as the operator handles them (API, CLI): the list, release (optionally back to
rotation once its checks pass again) and termination; the evidence bundle is always kept."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import structlog
from structlog.contextvars import bound_contextvars

from ..config import Config, ServiceConfig
from ..events import Event, EventType, Severity
from ..health import CheckKey
from ..machines import Lifecycle, Machine, Origin, launched_for
from .actions import StepFailed

if TYPE_CHECKING:
    from ..events import EventBus
    from ..monitor import Monitor
    from ..store import BaseStore
    from .fleet import Fleet

log = structlog.get_logger("healerd.remediation")


class Quarantine:
    def __init__(self, config: Config, monitor: Monitor, store: BaseStore, bus: EventBus, fleet: Fleet) -> None:
        self.config = config
        self.monitor = monitor
        self.store = store
        self.bus = bus
        self.fleet = fleet

    def event(self, m: Machine, summary: str, now: float, firing: bool, details: dict[str, Any]) -> None:
        self.bus.publish(
            Event(
                EventType.MACHINE_QUARANTINED,
                m.service,
                summary,
                now,
                machine=m.id,
                incident=m.attributes.get("incident"),
                severity=Severity.WARNING if firing or "retention" in details else Severity.INFO,
                firing=firing,
                details=details,
            )
        )

    def _announce_end(self, m: Machine, what: str) -> None:
        self.event(m, f"{m.id} {what}", time.time(), False, {"ended": what})
        log.info("quarantine ended", outcome=what)

    async def listing(self) -> list[dict[str, Any]]:
        out = []
        for m in await self.store.machines.load():
            if m.lifecycle is Lifecycle.QUARANTINED:
                bundle = self.config.daemon.state_dir / "forensics" / m.attributes.get("incident", "-")
                out.append(
                    {
                        "service": m.service,
                        "id": m.id,
                        "address": m.address,
                        "incident": m.attributes.get("incident"),
                        "quarantined_at": float(m.attributes.get("quarantined_at", 0) or 0),
                        "image_version": m.attributes.get("image_version"),
                        "bundle": str(bundle) if bundle.is_dir() else None,
                        "evidence": json.loads(m.attributes.get("evidence", "{}")),
                    }
                )
        return out

    async def _quarantined(self, machine_id: str) -> tuple[Machine, ServiceConfig]:
        m = await self.store.machines.find(machine_id)
        if m is None or m.lifecycle is not Lifecycle.QUARANTINED:
            raise LookupError(f"{machine_id} is not a quarantined machine (see GET /api/v1/quarantine)")
        svc = self.config.services.get(m.service)
        if svc is None:
            raise LookupError(f"service {m.service} of {machine_id} is no longer configured")
        return m, svc

    async def release(self, machine_id: str, to_rotation: bool, timeout: float = 60.0) -> dict[str, Any]:
        m, svc = await self._quarantined(machine_id)
        with bound_contextvars(service=m.service, machine=m.id, incident=m.attributes.get("incident")):
            await self.fleet.provider(svc).release(m)
            if not to_rotation:
                await self.monitor.put_machine(Machine(m.service, m.id, m.address, Lifecycle.RELEASED, m.attributes))
                self._announce_end(m, "released from quarantine (no longer managed)")
                return {
                    "machine": m.id,
                    "lifecycle": "released",
                    "detail": "released from quarantine; no longer managed",
                }
            # back on probation: its checks run again from scratch, and it returns only if they pass
            for spec in svc.checks:
                self.monitor.book.remove_check(CheckKey(m.service, m.id, spec.name), time.time())
            attrs = {**m.attributes, "launched_for": launched_for(Origin.RELEASE)}
            await self.monitor.put_machine(Machine(m.service, m.id, m.address, Lifecycle.PROBATION, attrs))
            try:
                await self.fleet.await_healthy(svc, m.id, timeout, m.attributes.get("incident"))
            except StepFailed as exc:
                raise RuntimeError(f"{m.id} was not returned to rotation: {exc}") from None
            await self.fleet.put_in_service(svc, m.id)
            self._announce_end(m, "released from quarantine: its checks passed, back in rotation")
            return {"machine": m.id, "lifecycle": "in_service", "detail": "its checks passed; back in rotation"}

    async def terminate(self, machine_id: str, why: str = "terminated (its evidence bundle is kept)") -> dict[str, Any]:
        m, svc = await self._quarantined(machine_id)
        with bound_contextvars(service=m.service, machine=m.id, incident=m.attributes.get("incident")):
            await self.fleet.provider(svc).terminate(m)
            await self.monitor.put_machine(Machine(m.service, m.id, m.address, Lifecycle.TERMINATED, m.attributes))
            self.fleet.update_gauges()
            self._announce_end(m, why)
            return {"machine": m.id, "lifecycle": "terminated", "detail": "terminated; its evidence bundle is kept"}
