"""Quarantine, all of it: taking a sick machine out of rotation and isolating it (kept, not terminated), its
evidence bundle, and what the operator does with it later (API, CLI): the list, release (optionally back
to rotation once its checks pass again) and termination. The evidence bundle is always kept."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from structlog.contextvars import bound_contextvars

from ..config import Config, ServiceConfig
from ..events import Event, EventType, Severity
from ..health import CheckKey
from ..machines import PROBATION, Lifecycle, Machine, Origin, launched_for
from .actions import ProbationFailed, StepFailed
from .forensics import write_bundle

if TYPE_CHECKING:
    from ..events import EventBus
    from ..monitor import Monitor
    from ..store import BaseStore
    from .fleet import Fleet
    from .incidents import Incident
    from .views import Views

log = structlog.get_logger("healerd.remediation")


class Quarantine:
    def __init__(
        self,
        config: Callable[[], Config],
        monitor: Monitor,
        *,
        store: BaseStore,
        bus: EventBus,
        fleet: Fleet,
        views: Views,
    ) -> None:
        self._config = config
        self.monitor = monitor
        self.store = store
        self.bus = bus
        self.fleet = fleet
        self.views = views  # the incident as the API shows it, for the evidence bundle

    @property
    def config(self) -> Config:
        return self._config()

    # -- what the playbook's steps do (machine.quarantine, forensics.collect) ------------------------------
    async def quarantine(self, svc: ServiceConfig, machine_id: str, incident: str, freeze: bool) -> dict[str, Any]:
        """Out of rotation, isolated by its provider, kept: returns the provider's evidence (idempotent)."""
        m = await self.fleet.machine(svc.name, machine_id)
        if m.lifecycle is Lifecycle.QUARANTINED:
            return dict(m.evidence)
        await self.fleet.rotations[svc.name].remove(m)
        evidence = await self.fleet.provider(svc).quarantine(m, incident, freeze)
        attrs = {
            **m.attributes,
            "quarantined_at": str(time.time()),
            "incident": incident,
            "evidence": json.dumps(evidence, default=str),
        }
        await self.monitor.put_machine(Machine(m.service, m.id, m.address, Lifecycle.QUARANTINED, attrs))
        inc = self.fleet.incidents.active.get(incident)
        if inc is not None:
            self.fleet.incidents.emit(
                EventType.MACHINE_QUARANTINED,
                inc,
                f"{m.id} quarantined (kept for forensics)",
                Severity.WARNING,
                machine=m.id,
                evidence=evidence,
            )
        self.fleet.update_gauges()
        return evidence

    async def collect_forensics(self, inc: Incident, evidence: dict[str, Any]) -> Path:
        """The evidence bundle: the incident, its checks' last results, the machine and its console."""
        svc = self.config.services[inc.service]
        m = await self.fleet.machine(inc.service, inc.machine)
        provider = self.fleet.provider(svc)
        checks = {
            spec.name: await self.store.results.recent(CheckKey(inc.service, m.id, spec.name), 50)
            for spec in svc.checks
        }
        files: dict[str, Any] = {
            "incident.json": await self.views.incident_view(inc.id),
            "checks.json": checks,
            "machine.json": await provider.describe(m),
            "console.log": await provider.console(m),
            "evidence.json": evidence,
        }
        root = self.config.daemon.state_dir / "forensics"
        bundle = await asyncio.to_thread(write_bundle, root, inc.id, files)
        keys = await provider.store_evidence(bundle, inc.id)
        if keys:
            log.info("evidence bundle mirrored", incident=inc.id, objects=len(keys))
        return bundle

    # -- what the operator does (API, CLI) -------------------------------------------------------------------
    def event(self, m: Machine, summary: str, now: float, firing: bool, details: dict[str, Any]) -> None:
        self.bus.publish(
            Event(
                EventType.MACHINE_QUARANTINED,
                m.service,
                summary,
                now,
                machine=m.id,
                incident=m.incident,
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
                bundle = self.config.daemon.state_dir / "forensics" / (m.incident or "-")
                out.append(
                    {
                        "service": m.service,
                        "id": m.id,
                        "address": m.address,
                        "incident": m.incident,
                        "quarantined_at": m.quarantined_at or 0.0,
                        "image_version": m.image_version,
                        "bundle": str(bundle) if bundle.is_dir() else None,
                        "evidence": m.evidence,
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
        with bound_contextvars(service=m.service, machine=m.id, incident=m.incident):
            await self.fleet.provider(svc).release(m)
            if not to_rotation:
                await self.monitor.put_machine(Machine(m.service, m.id, m.address, Lifecycle.RELEASED, m.attributes))
                self.fleet.update_gauges()
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
            self.fleet.update_gauges()  # no longer quarantined, whatever its checks say next
            try:
                await self.fleet.await_healthy(svc, m.id, timeout, m.incident)
            except ProbationFailed as exc:
                await self.quarantine(svc, m.id, m.incident or PROBATION, False)
                raise RuntimeError(f"{m.id} was not returned to rotation: {exc}") from None
            except StepFailed as exc:
                raise RuntimeError(f"{m.id} was not returned to rotation: {exc}") from None
            await self.fleet.put_in_service(svc, m.id)
            self._announce_end(m, "released from quarantine: its checks passed, back in rotation")
            return {"machine": m.id, "lifecycle": "in_service", "detail": "its checks passed; back in rotation"}

    async def terminate(self, machine_id: str, why: str = "terminated (its evidence bundle is kept)") -> dict[str, Any]:
        m, svc = await self._quarantined(machine_id)
        with bound_contextvars(service=m.service, machine=m.id, incident=m.incident):
            await self.fleet.provider(svc).terminate(m)
            await self.monitor.put_machine(Machine(m.service, m.id, m.address, Lifecycle.TERMINATED, m.attributes))
            self.fleet.update_gauges()
            self._announce_end(m, why)
            return {"machine": m.id, "lifecycle": "terminated", "detail": "terminated; its evidence bundle is kept"}
